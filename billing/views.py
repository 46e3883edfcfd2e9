"""Billing pages: choose a plan, pay, watch the agent come up, manage billing."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.models import Agent, AgentStatus
from billing.forms import LimitsForm, NewAgentForm
from billing.models import Subscription, SubscriptionStatus
from billing.services import (
    BillingError,
    BillingMode,
    billing_mode,
    cancel_in_development_mode,
    change_agent_limits,
    discard_unpaid_agent,
    offered_plans,
    places_left,
    portal_url,
    start_checkout,
)

S = AgentStatus
# States the agent page stops following: nothing will change them without someone acting.
SETTLED = (S.RUNNING, S.FAILED, S.PAUSED, S.STOPPED, S.KILLED, S.DELETED)


def _owned_agent(request: HttpRequest, agent_id: uuid.UUID) -> Agent:
    """The agent if it is the user's; anyone else's answers 404."""
    return get_object_or_404(Agent, pk=agent_id, owner=request.user)


def redirect_303(url: str) -> HttpResponse:
    """A See Other: the browser follows with a GET (to Stripe, or to our page)."""
    response = HttpResponse(status=303)
    response["Location"] = url
    return response


@login_required
@require_http_methods(["GET", "POST"])
def new_agent(request: HttpRequest) -> HttpResponse:
    plans = offered_plans()
    form = NewAgentForm(request.POST or None, plans=plans)
    if request.method == "POST" and form.is_valid():
        try:
            started = start_checkout(
                owner=request.user,
                plan=form.cleaned_data["plan"],
                name=form.cleaned_data["name"],
                provider=form.cleaned_data["provider"],
                provider_key=form.cleaned_data["provider_key"] or None,
                absolute_url=request.build_absolute_uri,
                actor=request.user,
            )
        except ValidationError as exc:
            form.add_service_error(exc)
        except BillingError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect_303(started.redirect_url)
    plan_rows = [(plan, places_left(owner=request.user, plan=plan)) for plan in plans]
    return render(
        request,
        "billing/new_agent.html",
        {"form": form, "plan_rows": plan_rows, "mode": billing_mode()},
    )


@login_required
@require_GET
def agent_page(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """The agent's billing page; after checkout it follows provisioning live."""
    agent = _owned_agent(request, agent_id)
    subscription = Subscription.objects.filter(agent=agent).select_related("plan").first()
    limits_form = LimitsForm(
        initial={
            "daily_token_cap": agent.daily_token_cap,
            "monthly_cost_cap": agent.monthly_cost_cap,
        }
    )
    return render(
        request,
        "billing/agent.html",
        {
            "agent": agent,
            "subscription": subscription,
            "status": agent_status_payload(agent, subscription),
            "limits_form": limits_form,
            "mode": billing_mode(),
            # Stripe's success URL: the payment was made, its event may trail.
            "returning_from_checkout": "session_id" in request.GET,
        },
    )


@login_required
@require_GET
def agent_status(request: HttpRequest, agent_id: uuid.UUID) -> JsonResponse:
    """What the agent page polls: the agent's state, in a few fields."""
    agent = _owned_agent(request, agent_id)
    subscription = Subscription.objects.filter(agent=agent).first()
    response = JsonResponse(agent_status_payload(agent, subscription))
    response["Cache-Control"] = "no-store"
    return response


def agent_status_payload(agent: Agent, subscription: Subscription | None) -> dict:
    label = agent.get_status_display()
    past_due = subscription is not None and subscription.status == SubscriptionStatus.PAST_DUE
    if agent.status == S.PAUSED and past_due:
        label = "Paused (payment failed)"  # not a cap, whatever the status's own label says
    return {
        "id": str(agent.id),
        "name": agent.name,
        "status": agent.status,
        "label": label,
        "reason": agent.status_reason,
        "subscription": subscription.status if subscription else None,
        "dev_mode": bool(subscription and subscription.dev_mode),
        "settled": agent.status in SETTLED,
    }


@login_required
@require_POST
def agent_limits(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    form = LimitsForm(request.POST)
    if form.is_valid():
        try:
            change_agent_limits(agent=agent, actor=request.user, limits=form.cleaned_data)
        except (ValidationError, BillingError) as exc:
            messages.error(request, _one_line(exc))
        else:
            messages.success(request, "Limits saved.")
    else:
        messages.error(request, _one_line(ValidationError(form.errors)))
    return redirect("billing:agent", agent_id=agent.pk)


@login_required
@require_GET
def checkout_canceled(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """Where Stripe sends someone who leaves its checkout without paying."""
    agent = _owned_agent(request, agent_id)
    subscription = get_object_or_404(Subscription, agent=agent)
    return render(
        request, "billing/checkout_canceled.html", {"agent": agent, "subscription": subscription}
    )


@login_required
@require_POST
def discard_agent(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    try:
        discard_unpaid_agent(agent=agent, actor=request.user)
    except BillingError as exc:
        messages.error(request, str(exc))
        return redirect("billing:agent", agent_id=agent.pk)
    messages.success(request, f"{agent.name} was discarded; nothing was charged.")
    return redirect("dashboard:home")


@login_required
@require_POST
def cancel_dev_subscription(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    agent = _owned_agent(request, agent_id)
    try:
        cancel_in_development_mode(agent=agent, actor=request.user)
    except BillingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{agent.name}'s plan was canceled; it is being removed.")
    return redirect("billing:agent", agent_id=agent.pk)


@login_required
@require_POST
def portal(request: HttpRequest) -> HttpResponse:
    """Off to Stripe's customer portal: cards, invoices, cancelling."""
    if billing_mode() != BillingMode.STRIPE:
        messages.info(request, "Billing runs in development mode here: there is no portal.")
        return redirect("dashboard:home")
    try:
        url = portal_url(
            user=request.user, return_url=request.build_absolute_uri(reverse("dashboard:home"))
        )
    except BillingError as exc:
        messages.error(request, str(exc))
        return redirect("dashboard:home")
    return redirect_303(url)


def _one_line(exc: ValidationError | BillingError) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)
