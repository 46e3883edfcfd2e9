from django.apps import AppConfig


class DropletsConfig(AppConfig):
    name = "droplets"
