"""Settings for the test suite: the real settings with test-only defaults.

Environment variables still win, so CI's DATABASE_URL and REDIS_URL apply.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-0123456789")
# A fixed test key ring (ids t2 newest, t1 older) so rotation can be tested.
os.environ.setdefault(
    "ENCRYPTION_KEYS",
    "t2:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=,"
    "t1:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=",
)
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")

from safer_claw.settings import *  # noqa: F403
from safer_claw.settings import BASE_DIR, DATABASES

# Tests clear the cache between tests; a per-process cache keeps that from
# flushing the Redis database that the broker (and other runs) use.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
# Static files straight from the finders: no collectstatic before tests.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so a worker process started by a test can share it;
    # one per run, so two runs on one checkout do not write the same file.
    DATABASES["default"]["TEST"] = {
        "NAME": str(BASE_DIR / ".local" / f"test-{os.getpid()}.sqlite3")
    }
