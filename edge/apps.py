from django.apps import AppConfig


class EdgeConfig(AppConfig):
    """Only for `manage.py edge_bridge`: the edge app has no models and needs no database."""

    name = "edge"
    verbose_name = "Edge bridge"
