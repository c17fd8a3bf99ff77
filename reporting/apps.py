from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ReportingConfig(AppConfig):
    name = "reporting"
    verbose_name = "Reporting (SQL views)"

    def ready(self) -> None:
        from reporting.install import install_after_migrate

        post_migrate.connect(install_after_migrate, sender=self)
