from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "safer_claw.accounts"
    label = "accounts"
