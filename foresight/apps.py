from django.apps import AppConfig


class ForesightConfig(AppConfig):
    name = "foresight"
    verbose_name = "Foresight"
