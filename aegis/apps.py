from django.apps import AppConfig


class AegisConfig(AppConfig):
    name = "aegis"
    verbose_name = "Aegis platform"
