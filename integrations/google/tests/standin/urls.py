from django.urls import path, re_path

from integrations.google.tests.standin import views

urlpatterns = [
    # Google's OAuth endpoints (accounts.google.com, oauth2.googleapis.com)
    path("o/oauth2/v2/auth", views.GoogleAuthorizationView.as_view()),
    path("token", views.GoogleTokenView.as_view()),
    path("revoke", views.GoogleRevokeView.as_view()),
    # The APIs (www.googleapis.com/calendar/v3, gmail.googleapis.com/gmail/v1, .../drive/v3)
    path("calendar/v3/calendars/<str:calendar_id>/events", views.calendar_events),
    path("gmail/v1/users/<str:user>/messages", views.gmail_list),
    path("gmail/v1/users/<str:user>/messages/<str:message_id>", views.gmail_get),
    path("drive/v3/files", views.drive_list),
    path("drive/v3/files/<str:file_id>", views.drive_get),
    path("drive/v3/files/<str:file_id>/export", views.drive_export),
    # Test control (loopback only)
    re_path(r"^_control/(?P<action>[a-z-]+)$", views.control),
]
