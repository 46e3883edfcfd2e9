from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "safer_claw.accounts"
    label = "accounts"

    def ready(self) -> None:
        # Binds allauth's MFA secrets to their rows on every save and load.
        from safer_claw.accounts import mfa_secrets  # noqa: F401
