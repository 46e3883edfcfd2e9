from django.urls import path

from safer_claw.dashboard import views

app_name = "dashboard"

agent = "agents/<uuid:agent_id>/"
urlpatterns = [
    path("", views.dashboard_home, name="home"),
    path("stop-all/", views.stop_all, name="stop-all"),
    path(agent, views.agent_page, name="agent"),
    path(agent + "live", views.agent_live, name="agent-live"),
    path(agent + "messages", views.send_message, name="agent-message"),
    path(agent + "start", views.start, name="agent-start"),
    path(agent + "stop", views.stop, name="agent-stop"),
    path(agent + "delete", views.delete, name="agent-delete"),
    path(agent + "kill-switch", views.kill_switch, name="agent-kill-switch"),
    path(agent + "schedules", views.add_schedule, name="agent-schedule-add"),
    path(agent + "settings", views.save_settings, name="agent-settings"),
    path(
        agent + "schedules/<int:schedule_id>/delete",
        views.delete_schedule,
        name="agent-schedule-delete",
    ),
]
