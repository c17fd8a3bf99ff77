"""SPC: control limits per station signal, and defect alerts raised by SPC rules (source "spc",
with the rule, chart, signal and limits that fired; one alert per sample, signal, chart and rule)."""

import django.db.models.deletion
import django.db.models.functions.comparison
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("foresight", "0003_roles"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ControlLimits",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("signal", models.CharField(max_length=64)),
                (
                    "chart",
                    models.CharField(
                        choices=[
                            ("xbar_r", "X̄-R (subgroup means and ranges)"),
                            ("i_mr", "I-MR (individuals and moving ranges)"),
                        ],
                        max_length=8,
                    ),
                ),
                (
                    "subgroup_size",
                    models.PositiveSmallIntegerField(
                        help_text="Consecutive samples per subgroup: 1 for individuals (I-MR), 2-10 for X̄-R."
                    ),
                ),
                (
                    "interval",
                    models.PositiveIntegerField(
                        help_text="A subgroup (an individual) starts every this many samples of the signal; equal to the subgroup size, subgroups are back to back."
                    ),
                ),
                ("centre", models.FloatField(help_text="Centre line of the X̄ (or I) chart.")),
                (
                    "sigma",
                    models.FloatField(
                        help_text="Process standard deviation estimated from the ranges: R̄/d2 (or MR̄/1.128)."
                    ),
                ),
                ("ucl", models.FloatField(help_text="Upper control limit of the X̄ (or I) chart.")),
                ("lcl", models.FloatField(help_text="Lower control limit of the X̄ (or I) chart.")),
                (
                    "range_centre",
                    models.FloatField(help_text="R̄ (or MR̄): centre line of the spread chart."),
                ),
                (
                    "range_ucl",
                    models.FloatField(help_text="Upper control limit of the R (or MR) chart."),
                ),
                (
                    "range_lcl",
                    models.FloatField(help_text="Lower control limit of the R (or MR) chart."),
                ),
                ("baseline_start", models.DateTimeField()),
                ("baseline_end", models.DateTimeField(help_text="Inclusive, like baseline_start.")),
                (
                    "baseline_samples",
                    models.PositiveIntegerField(help_text="Samples of the signal used."),
                ),
                (
                    "baseline_points",
                    models.PositiveIntegerField(help_text="Subgroups (or individuals) charted."),
                ),
                (
                    "baseline_points_outside",
                    models.PositiveIntegerField(
                        default=0,
                        help_text="Baseline points beyond these limits on either chart: a baseline that was not in control itself.",
                    ),
                ),
                (
                    "rules",
                    models.CharField(
                        default="1,2,3,4,5,6,7,8",
                        help_text="The Nelson rules that raise alerts, e.g. 1,2,5,6 (rule 1 on both charts).",
                        max_length=15,
                    ),
                ),
                ("active", models.BooleanField(default=True)),
                ("computed_at", models.DateTimeField()),
                (
                    "deactivated_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="When newer limits replaced these or SPC was stopped.",
                        null=True,
                    ),
                ),
            ],
            options={
                "verbose_name": "control limits",
                "verbose_name_plural": "control limits",
                "ordering": ["-computed_at", "-id"],
            },
        ),
        migrations.RemoveConstraint(
            model_name="defectalert",
            name="foresight_alert_once_per_sample",
        ),
        migrations.RemoveConstraint(
            model_name="defectalert",
            name="foresight_alert_source_matches_model",
        ),
        migrations.AddField(
            model_name="defectalert",
            name="chart",
            field=models.CharField(
                blank=True,
                choices=[("xbar", "X̄"), ("r", "R"), ("i", "I"), ("mr", "MR")],
                max_length=8,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="defectalert",
            name="rule",
            field=models.CharField(
                blank=True, help_text="SPC: nelson_1 … nelson_8.", max_length=16, null=True
            ),
        ),
        migrations.AddField(
            model_name="defectalert",
            name="signal",
            field=models.CharField(
                blank=True, help_text="SPC: the charted signal.", max_length=64, null=True
            ),
        ),
        migrations.AlterField(
            model_name="defectalert",
            name="source",
            field=models.CharField(
                choices=[("model", "Model"), ("baseline", "Baseline"), ("spc", "SPC")],
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="controllimits",
            name="computed_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="controllimits",
            name="station",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="control_limits",
                to="mes.station",
            ),
        ),
        migrations.AddField(
            model_name="defectalert",
            name="control_limits",
            field=models.ForeignKey(
                blank=True,
                help_text="SPC: the limits the point was judged against.",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="alerts",
                to="foresight.controllimits",
            ),
        ),
        migrations.AddConstraint(
            model_name="defectalert",
            constraint=models.UniqueConstraint(
                models.F("station"),
                models.F("ts"),
                models.F("seq"),
                django.db.models.functions.comparison.Coalesce("signal", models.Value("")),
                django.db.models.functions.comparison.Coalesce("chart", models.Value("")),
                django.db.models.functions.comparison.Coalesce("rule", models.Value("")),
                name="foresight_alert_once_per_sample",
            ),
        ),
        migrations.AddConstraint(
            model_name="defectalert",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("model_version__isnull", False), ("source", "model")),
                    models.Q(("model_version__isnull", True), ("source__in", ["baseline", "spc"])),
                    _connector="OR",
                ),
                name="foresight_alert_source_matches_model",
            ),
        ),
        migrations.AddConstraint(
            model_name="defectalert",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("chart__in", ["xbar", "r", "i", "mr"]),
                        ("chart__isnull", False),
                        ("control_limits__isnull", False),
                        (
                            "rule__in",
                            [
                                "nelson_1",
                                "nelson_2",
                                "nelson_3",
                                "nelson_4",
                                "nelson_5",
                                "nelson_6",
                                "nelson_7",
                                "nelson_8",
                            ],
                        ),
                        ("rule__isnull", False),
                        ("signal__isnull", False),
                        ("source", "spc"),
                    ),
                    models.Q(
                        models.Q(("source", "spc"), _negated=True),
                        ("chart__isnull", True),
                        ("control_limits__isnull", True),
                        ("rule__isnull", True),
                        ("signal__isnull", True),
                    ),
                    _connector="OR",
                ),
                name="foresight_alert_spc_names_its_rule",
            ),
        ),
        migrations.AddIndex(
            model_name="controllimits",
            index=models.Index(
                fields=["station", "signal", "-computed_at"], name="foresight_spc_history"
            ),
        ),
        migrations.AddConstraint(
            model_name="controllimits",
            constraint=models.UniqueConstraint(
                condition=models.Q(("active", True)),
                fields=("station", "signal"),
                name="foresight_spc_one_active_per_signal",
            ),
        ),
        migrations.AddConstraint(
            model_name="controllimits",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("chart", "i_mr"), ("subgroup_size", 1)),
                    models.Q(
                        ("chart", "xbar_r"), ("subgroup_size__gte", 2), ("subgroup_size__lte", 10)
                    ),
                    _connector="OR",
                ),
                name="foresight_spc_chart_matches_subgroup",
            ),
        ),
        migrations.AddConstraint(
            model_name="controllimits",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("centre__lt", models.F("ucl")),
                    ("lcl__lt", models.F("centre")),
                    ("sigma__gt", 0),
                    ("range_lcl__gte", 0),
                    ("range_lcl__lte", models.F("range_centre")),
                    ("range_centre__lt", models.F("range_ucl")),
                ),
                name="foresight_spc_limits_ordered",
            ),
        ),
        migrations.AddConstraint(
            model_name="controllimits",
            constraint=models.CheckConstraint(
                condition=models.Q(("baseline_end__gte", models.F("baseline_start"))),
                name="foresight_spc_baseline_range_ordered",
            ),
        ),
        migrations.AddConstraint(
            model_name="controllimits",
            constraint=models.CheckConstraint(
                condition=models.Q(("rules__regex", "^[1-8](,[1-8]){0,7}$")),
                name="foresight_spc_rules_format",
            ),
        ),
        migrations.AddConstraint(
            model_name="controllimits",
            constraint=models.CheckConstraint(
                condition=models.Q(("interval__gte", models.F("subgroup_size"))),
                name="foresight_spc_interval_holds_a_subgroup",
            ),
        ),
        migrations.AddConstraint(
            model_name="controllimits",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("active", True), ("deactivated_at__isnull", True)),
                    models.Q(("active", False), ("deactivated_at__isnull", False)),
                    _connector="OR",
                ),
                name="foresight_spc_deactivated_when_inactive",
            ),
        ),
    ]
