"""Dashboard pages."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from agents.models import Agent, AgentStatus


@login_required
def dashboard_home(request: HttpRequest) -> HttpResponse:
    agents = Agent.objects.filter(owner=request.user).exclude(status=AgentStatus.DELETED)
    return render(request, "dashboard/home.html", {"agents": agents})
