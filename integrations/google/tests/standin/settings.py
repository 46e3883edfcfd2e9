"""Django settings of the Google stand-in process (not the control plane's)."""

import os

SECRET_KEY = "google-stand-in-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "oauth2_provider",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "integrations.google.tests.standin.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["STANDIN_DB"],
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
LOGIN_URL = "/_control/login"
# The tests load big mailboxes and files through /_control/serve.
DATA_UPLOAD_MAX_MEMORY_SIZE = None
# Client secrets are hashed with the first hasher: a fast one, this is a test server.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

SCOPES = {
    "https://www.googleapis.com/auth/calendar.events.readonly": "View events on all your calendars",
    "https://www.googleapis.com/auth/gmail.readonly": "View your email messages and settings",
    "https://www.googleapis.com/auth/drive.readonly": "See and download all your Drive files",
}
OAUTH2_PROVIDER = {
    "SCOPES": SCOPES,
    "DEFAULT_SCOPES": [],
    "PKCE_REQUIRED": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,  # S256 only, like Google
    "ROTATE_REFRESH_TOKEN": False,  # Google keeps a refresh token until it is revoked
    "ACCESS_TOKEN_EXPIRE_SECONDS": 3599,  # Google's
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "REQUEST_APPROVAL_PROMPT": "force",  # always show the consent screen
    # The token lifetime can be changed at run time (/_control/settings).
    "ALWAYS_RELOAD_OAUTHLIB_CORE": True,
}
LOGGING = {"version": 1, "disable_existing_loggers": True}
