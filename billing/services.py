"""Billing writes: checkout, the customer portal, plan limits, and what happens to
an agent when its subscription starts, lapses or ends.

Stripe is reached only through :mod:`billing.stripe_client`; Docker only
through the agents services, from Celery tasks enqueued after commit.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.mail import mail_admins
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from agents.models import (
    PAID_STATES,
    Agent,
    AgentEvent,
    AgentStatus,
    InvalidTransition,
    PaymentRequired,
)
from agents.notifications import last_event_key, notify_owner_once
from agents.services import apply_agent_limits, create_agent
from agents.tokens import revoke_agent_tokens
from billing import stripe_client
from billing.models import (
    HOLDS_PLACE,
    Customer,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from billing.stripe_client import StripeFailed
from safer_claw.outbox import after_commit

logger = logging.getLogger(__name__)
S = AgentStatus
MAX_RETRY_DELAY_SECONDS = 600
STALLED_DEPLOY_MARGIN_SECONDS = 600


class BillingMode(enum.StrEnum):
    STRIPE = "stripe"
    DEVELOPMENT = "development"  # no Stripe keys: plans are activated without payment
    OFF = "off"  # no keys outside a local run: nobody can start an agent


class BillingError(Exception):
    """A billing action cannot be done; the message is for the person who asked."""


class BillingUnavailable(BillingError):
    """Billing is off here, or Stripe cannot be reached: try again later."""


class PlanFull(BillingError):
    """The owner holds as many agents as the plan allows."""


# Sources of the pauses billing makes when a subscription stops paying, so
# that only those are lifted when it pays again (not an owner's, not a cap's).
PAYMENT_PAUSE_SOURCES = ("stripe", "billing")


def billing_mode() -> BillingMode:
    if settings.STRIPE_SECRET_KEY:
        return BillingMode.STRIPE
    if settings.BILLING_DEV_MODE:
        return BillingMode.DEVELOPMENT
    return BillingMode.OFF


def offered_plans() -> QuerySet[Plan]:
    """Plans a user may choose now (with Stripe, only those with a price)."""
    plans = Plan.objects.filter(is_active=True)
    if billing_mode() == BillingMode.STRIPE:
        plans = plans.exclude(stripe_price_id="")
    return plans


def places_left(*, owner: Any, plan: Plan) -> int:
    """How many more agents ``owner`` may start on ``plan`` (unpaid checkouts count)."""
    held = Subscription.objects.filter(owner=owner, plan=plan, status__in=HOLDS_PLACE).count()
    return max(plan.max_agents - held, 0)


# --- Checkout ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutStarted:
    agent: Agent
    redirect_url: str  # Stripe's checkout page; in development mode, the agent's page
    checkout_url: str | None  # Stripe's checkout page; None when active at once


def start_checkout(
    *,
    owner: Any,
    plan: Plan,
    name: str,
    provider: str,
    provider_key: str | None,
    absolute_url: Callable[[str], str],
    actor: Any,
    source: str = "owner",
    limits: dict[str, Any] | None = None,
) -> CheckoutStarted:
    """Create the agent, awaiting payment, and the checkout that pays for it.

    The only way an owner gets an agent (dashboard, API, operator command).
    With Stripe the owner is then sent to a hosted Checkout Session
    (subscription mode, their Stripe customer reused); the agent is deployed
    when Stripe reports the payment. In development mode the plan is active at
    once and the deploy queued. ``actor`` and ``source`` say who asked (the
    owner, or an operator); ``limits`` may lower the plan's, never raise them.
    Raises ValidationError (a bad name, a limit above the plan), PlanFull (no
    place left on the plan), BillingUnavailable (billing off, Stripe
    unavailable) or BillingError (plan not offered).
    """
    mode = billing_mode()
    if mode == BillingMode.OFF:
        raise BillingUnavailable(
            "Billing is not set up on this server, so no agent can be started yet. "
            "Please tell the operator."
        )
    subscription = _create_subscribed_agent(
        owner=owner,
        plan=plan,
        name=name,
        provider=provider,
        provider_key=provider_key,
        limits=limits or {},
        actor=actor,
        source=source,
        dev_mode=mode == BillingMode.DEVELOPMENT,
    )
    agent = subscription.agent
    agent.refresh_from_db()  # development mode has moved it on
    agent_url = absolute_url(reverse("billing:agent", args=[agent.pk]))
    if mode == BillingMode.DEVELOPMENT:
        return CheckoutStarted(agent=agent, redirect_url=agent_url, checkout_url=None)
    try:
        session = _open_checkout(subscription, agent_url=agent_url, absolute_url=absolute_url)
    except StripeFailed as exc:
        logger.warning("checkout for agent %s not started: %s", subscription.agent_id, exc)
        end_subscription(
            subscription, source="billing", reason=f"checkout could not be started: {exc}"
        )
        raise BillingUnavailable(
            "Stripe could not open the checkout, and nothing was charged. "
            "Please try again in a moment."
        ) from exc
    return CheckoutStarted(agent=agent, redirect_url=session.url, checkout_url=session.url)


def grant_complimentary(
    *,
    owner: Any,
    plan: Plan,
    name: str,
    provider: str,
    provider_key: str | None,
    reason: str,
) -> Agent:
    """An operator gives ``owner`` an agent on ``plan`` that nobody pays for.

    Recorded as a complimentary subscription, active (and the agent's deploy
    queued) at once, with ``reason`` in the agent's audit trail; it takes a
    place on the plan like any other. Any plan may be granted, offered or not,
    in any billing mode. Raises ValidationError, PlanFull, or BillingError for
    a grant without a reason.
    """
    if not reason.strip():
        raise BillingError("Say why the agent is complimentary: it is kept in its audit trail.")
    subscription = _create_subscribed_agent(
        owner=owner,
        plan=plan,
        name=name,
        provider=provider,
        provider_key=provider_key,
        limits={},
        actor=None,
        source="operator",
        complimentary_reason=reason.strip(),
    )
    agent = subscription.agent
    agent.refresh_from_db()  # active at once: it has moved on
    return agent


@transaction.atomic
def _create_subscribed_agent(
    *,
    owner: Any,
    plan: Plan,
    name: str,
    provider: str,
    provider_key: str | None,
    limits: dict[str, Any],
    actor: Any,
    source: str,
    dev_mode: bool = False,
    complimentary_reason: str = "",
) -> Subscription:
    # The owner's row lock serialises their checkouts: two started at once
    # cannot both take the last place on a plan.
    get_user_model().objects.select_for_update().get(pk=owner.pk)
    if not complimentary_reason and not offered_plans().filter(pk=plan.pk).exists():
        raise BillingError(f"The {plan.name} plan is not offered any more.")
    if places_left(owner=owner, plan=plan) < 1:
        raise PlanFull(
            f"Your {plan.name} plan allows {plan.max_agents} agent(s), and you have them all. "
            "Delete one, or choose another plan."
        )
    _refuse_limits_above(plan, limits)
    agent = create_agent(
        owner=owner,
        name=name,
        provider=provider,
        provider_key=provider_key,
        actor=actor,
        source=source,
        **{**plan.agent_limits(), **limits},
    )
    subscription = Subscription.objects.create(
        agent=agent,
        owner=owner,
        plan=plan,
        dev_mode=dev_mode,
        complimentary=bool(complimentary_reason),
    )
    if dev_mode:
        set_subscription_status(
            subscription,
            SubscriptionStatus.ACTIVE,
            source="billing",
            reason="development mode: plan activated without payment",
        )
    elif complimentary_reason:
        set_subscription_status(
            subscription,
            SubscriptionStatus.ACTIVE,
            source="operator",
            reason=f"complimentary plan granted by an operator: {complimentary_reason}",
        )
    return subscription


def _refuse_limits_above(plan: Plan, limits: dict[str, Any]) -> None:
    above = plan.limits_above_plan(limits)
    if above:
        raise ValidationError(
            {name: f"Your {plan.name} plan allows at most {getattr(plan, name)}." for name in above}
        )


def _open_checkout(
    subscription: Subscription, *, agent_url: str, absolute_url: Callable[[str], str]
) -> stripe_client.CheckoutSession:
    customer_id = ensure_customer(subscription.owner)
    session = stripe_client.create_checkout_session(
        customer_id=customer_id,
        price_id=subscription.plan.stripe_price_id,
        agent_id=str(subscription.agent_id),
        plan_name=subscription.plan.name,
        success_url=f"{agent_url}?session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=absolute_url(reverse("billing:checkout-canceled", args=[subscription.agent_id])),
        idempotency_key=f"saferclaw-checkout-{subscription.pk}",
    )
    Subscription.objects.filter(pk=subscription.pk).update(
        stripe_customer_id=customer_id,
        stripe_checkout_session_id=session.id,
        checkout_url=session.url,
        updated_at=timezone.now(),
    )
    return session


def ensure_customer(user: Any) -> str:
    """The user's Stripe customer id, made at Stripe the first time."""
    existing = Customer.objects.filter(user=user).first()
    if existing:
        return existing.stripe_customer_id
    customer_id = stripe_client.create_customer(email=user.email, user_id=str(user.pk))
    # Two first checkouts at once get the same id from Stripe (idempotency key),
    # and the unique user column keeps one row.
    row, _ = Customer.objects.get_or_create(user=user, defaults={"stripe_customer_id": customer_id})
    return row.stripe_customer_id


# --- What pays for an agent: the subscription's status and the agent's billing_active ---


def set_subscription_status(
    subscription: Subscription,
    status: str,
    *,
    source: str,
    reason: str,
    actor: Any = None,
    **fields: Any,
) -> str:
    """Move a subscription to ``status``, and its agent with it; says what the agent does.

    With :func:`end_subscription` (which `canceled` goes to) the only way a
    subscription's status changes, so its agent's ``billing_active`` is always
    in step. Becoming active deploys an agent awaiting payment and resumes one
    that billing paused; ceasing to be active pauses a running agent, with
    ``reason`` for its owner to read, in the same transaction. A status it already has changes
    nothing but ``fields`` (Stripe's ids, say). Call inside a transaction that
    holds the subscription's row. Raises BillingError for an ended subscription.
    """
    if status == SubscriptionStatus.CANCELED:
        ended = end_subscription(subscription, source=source, reason=reason, actor=actor, **fields)
        return "agent being removed" if ended else "subscription already ended"
    if subscription.status == SubscriptionStatus.CANCELED:
        raise BillingError(f"this subscription has ended; it cannot become {status}")
    changed = subscription.status != status
    _record_status(subscription, status, source=source, reason=reason, actor=actor, **fields)
    agent = Agent.objects.get(pk=subscription.agent_id)
    if not changed:
        return f"agent left {agent.status}"
    if status == SubscriptionStatus.ACTIVE:
        return _run_paid_agent(agent, source=source, reason=reason, actor=actor)
    return _pause_unpaid_agent(agent, source=source, reason=reason)


def _record_status(
    subscription: Subscription, status: str, *, source: str, reason: str, actor: Any, **fields: Any
) -> None:
    subscription.status = status
    for name, value in fields.items():
        setattr(subscription, name, value)
    subscription.save()
    _sync_billing_active(subscription, source=source, reason=reason, actor=actor)


def _sync_billing_active(
    subscription: Subscription, *, source: str, reason: str, actor: Any
) -> None:
    """The one writer of ``Agent.billing_active``: on while the subscription is active
    (development-mode and complimentary ones included), off otherwise."""
    active = subscription.status == SubscriptionStatus.ACTIVE
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=subscription.agent_id)
        if agent.billing_active == active:
            return
        agent.billing_active = active
        agent.save(update_fields=["billing_active", "updated_at"])
        AgentEvent.objects.create(
            agent=agent,
            actor=actor,
            source=source,
            reason=f"billing {'active' if active else 'inactive'}: subscription "
            f"{subscription.status} ({reason})",
        )


def _run_paid_agent(agent: Agent, *, source: str, reason: str, actor: Any) -> str:
    if agent.status == S.PENDING_PAYMENT:
        agent.transition(
            S.PROVISIONING,
            actor=actor,
            source=source,
            reason=reason,
            allowed_from=frozenset({S.PENDING_PAYMENT}),
        )
        enqueue_deploy(agent)
        return f"agent {agent.pk} provisioning; deploy in the outbox"
    if agent.status == S.PAUSED and _paused_for_payment(agent):
        from billing.tasks import resume_paid_agent

        after_commit(resume_paid_agent, str(agent.pk))
        return "agent resuming"
    return f"agent left {agent.status}"


def _paused_for_payment(agent: Agent) -> bool:
    last = agent.events.filter(to_status=S.PAUSED).order_by("created_at", "id").last()
    return last is not None and last.source in PAYMENT_PAUSE_SOURCES


def _pause_unpaid_agent(agent: Agent, *, source: str, reason: str) -> str:
    from billing.tasks import stop_paused_agent

    if agent.status not in PAID_STATES:
        return f"agent left {agent.status}"
    agent.transition(S.PAUSED, source=source, reason=reason)
    after_commit(stop_paused_agent, str(agent.pk))
    return f"agent paused: {reason}"


def enqueue_deploy(agent: Agent) -> None:
    from billing.tasks import deploy_paid_agent  # the tasks module imports this one

    after_commit(deploy_paid_agent, str(agent.pk))


# --- Cancelling ---------------------------------------------------------------------------


def end_subscription(
    subscription: Subscription, *, source: str, reason: str, actor: Any = None, **fields: Any
) -> bool:
    """End what pays for the agent: its token is revoked now (the gateway refuses
    its next call) and it is torn down. ``fields`` are saved with the status
    (Stripe's ids). Returns False if it had ended already."""
    from billing.tasks import tear_down_agent

    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if subscription.status == SubscriptionStatus.CANCELED:
            return False
        _record_status(
            subscription,
            SubscriptionStatus.CANCELED,
            source=source,
            reason=reason,
            actor=actor,
            canceled_at=timezone.now(),
            **fields,
        )
        agent = Agent.objects.get(pk=subscription.agent_id)
        revoke_agent_tokens(agent=agent)
        if agent.status == S.PENDING_PAYMENT:  # never deployed: nothing to tear down
            agent.transition(S.DELETED, actor=actor, source=source, reason=reason)
        elif agent.status != S.DELETED:
            after_commit(tear_down_agent, str(agent.pk))
    return True


def stop_billing(subscription: Subscription) -> None:
    """The agent is gone (deleted through the API, say): stop charging for it.

    Its Stripe subscription is canceled, or its open checkout closed. Raises
    StripeFailed when Stripe cannot be reached (the caller retries).
    """
    charged = subscription.status != SubscriptionStatus.CANCELED and not (
        subscription.dev_mode or subscription.complimentary
    )
    if charged and subscription.stripe_subscription_id:
        stripe_client.cancel_subscription(subscription.stripe_subscription_id)
    elif charged and subscription.stripe_checkout_session_id:
        try:
            stripe_client.expire_checkout_session(subscription.stripe_checkout_session_id)
        except StripeFailed as exc:
            if not exc.permanent:  # permanent: not open any more, nothing to close
                raise
    with transaction.atomic():
        row = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if row.status in HOLDS_PLACE:
            _record_status(
                row,
                SubscriptionStatus.CANCELED,
                source="billing",
                reason="its agent was deleted",
                actor=None,
                canceled_at=timezone.now(),
            )


def discard_unpaid_agent(*, agent: Agent, actor: Any) -> None:
    """The owner gives up on an agent they have not paid for: its checkout is
    closed at Stripe (so it cannot be paid later) and the agent deleted."""
    subscription = _subscription_of(agent)
    if subscription.status != SubscriptionStatus.PENDING:
        raise BillingError("This agent is paid for: cancel it from Manage billing instead.")
    if subscription.stripe_checkout_session_id and billing_mode() == BillingMode.STRIPE:
        try:
            stripe_client.expire_checkout_session(subscription.stripe_checkout_session_id)
        except StripeFailed as exc:
            raise BillingError(
                "Stripe would not close this checkout (it may have just been paid). "
                "Reload this page in a moment."
            ) from exc
    end_subscription(subscription, source="owner", actor=actor, reason="checkout abandoned")


def cancel_in_development_mode(*, agent: Agent, actor: Any) -> None:
    """What the customer portal's cancel does, for subscriptions that skipped Stripe."""
    subscription = _subscription_of(agent)
    if not subscription.dev_mode:
        raise BillingError("This subscription is with Stripe: cancel it from Manage billing.")
    end_subscription(subscription, source="owner", actor=actor, reason="canceled by its owner")


def _subscription_of(agent: Agent) -> Subscription:
    subscription = Subscription.objects.filter(agent=agent).first()
    if subscription is None:
        raise BillingError("This agent has no subscription.")
    return subscription


def portal_url(*, user: Any, return_url: str) -> str:
    """Where the user manages payment details, invoices and cancellation at Stripe."""
    customer = Customer.objects.filter(user=user).first()
    if customer is None:
        raise BillingError("You have no billing account yet: it is made at your first checkout.")
    try:
        return stripe_client.create_portal_session(
            customer_id=customer.stripe_customer_id, return_url=return_url
        )
    except StripeFailed as exc:
        raise BillingError("Stripe's billing page is not available; try again shortly.") from exc


# --- Limits -------------------------------------------------------------------------------


def change_agent_limits(*, agent: Agent, actor: Any, limits: dict[str, Any]) -> Agent:
    """The owner sets their own limits for an agent, never above its plan's.

    Raises ValidationError naming each limit that asks for more than the plan grants.
    """
    _refuse_limits_above(_subscription_of(agent).plan, limits)
    return apply_agent_limits(
        agent=agent, limits=limits, actor=actor, source="owner", reason="owner changed limits"
    )


# --- Deploys ------------------------------------------------------------------------------


def deploy_retry_delay(retries: int) -> float:
    """Seconds before deploy attempt ``retries + 2``: exponential, capped, with jitter
    so agents that failed together do not all come back at once."""
    delay = _backoff(retries)
    return delay + secrets.SystemRandom().uniform(0, delay / 10)


def _backoff(retries: int) -> float:
    return min(settings.DEPLOY_RETRY_BACKOFF_SECONDS * 2**retries, MAX_RETRY_DELAY_SECONDS)


def report_deploy_failure(*, agent: Agent, reason: str) -> None:
    """A deploy has failed for good: the agent ends `failed` with the reason (its
    slot was given back by the deploy), its owner is emailed, operators alerted."""
    try:
        agent.transition(
            S.FAILED,
            source="system",
            reason=f"deploy failed: {reason}",
            allowed_from=frozenset({S.PROVISIONING}),
        )
    except InvalidTransition:
        logger.info("deploy of agent %s failed, but it is %s now", agent.pk, agent.status)
        return
    logger.error("deploy of agent %s failed for good: %s", agent.pk, agent.status_reason)
    tell_deploy_failure(agent)


def tell_deploy_failure(agent: Agent) -> None:
    """Mail the owner and the operators about the agent's last failed deploy, once
    (a task that runs again after its worker died finds the mail claimed)."""
    sent = notify_owner_once(
        agent=agent,
        key=last_event_key(agent, "deploy-failed", S.FAILED),
        subject=f"Your agent {agent.name} could not be started",
        message=(
            f"We could not start your agent {agent.name}.\n\n"
            f"Reason: {agent.status_reason}\n\n"
            "Our operators have been alerted and will start it again; your dashboard "
            "shows its state.\n"
        ),
    )
    if sent:
        mail_admins(
            subject=f"Deploy failed: agent {agent.pk}",
            message=f"{agent.name} of {agent.owner.email}: {agent.status_reason}\n"
            "Retry it from admin (Billing > Failed agents) or `manage.py deploy_agent`.",
        )


def requeue_stalled_deploys() -> int:
    """Queue again the deploys of paid agents stuck in `provisioning` with no droplet
    for longer than every retry takes (a broker that lost the task, a worker that
    died with it). Returns how many it queued."""
    retrying = sum(_backoff(n) * 1.1 for n in range(settings.DEPLOY_MAX_RETRIES))
    longest = retrying + STALLED_DEPLOY_MARGIN_SECONDS
    stalled = Agent.objects.filter(
        status=S.PROVISIONING,
        droplet__isnull=True,
        updated_at__lt=timezone.now() - dt.timedelta(seconds=longest),
        subscription__status=SubscriptionStatus.ACTIVE,
    )
    for agent in stalled:
        logger.warning(
            "deploy of agent %s stalled since %s: queued again", agent.pk, agent.updated_at
        )
        enqueue_deploy(agent)
    return len(stalled)


def retry_deploy(*, agent: Agent, actor: Any) -> None:
    """An operator deploys a failed agent again, in the background.

    Raises BillingError when nothing pays for it any more, or it is not `failed`.
    """
    try:
        with transaction.atomic():
            agent.transition(
                S.PROVISIONING,
                actor=actor,
                source="operator",
                reason="deploy retried by an operator",
                allowed_from=frozenset({S.FAILED}),
            )
            enqueue_deploy(agent)
    except PaymentRequired as exc:
        raise BillingError(_why_unpaid(agent)) from exc
    except InvalidTransition as exc:
        raise BillingError(f"it is {exc.current} now, not failed") from exc


def _why_unpaid(agent: Agent) -> str:
    subscription = Subscription.objects.filter(agent=agent).first()
    if subscription is None:
        return "nothing pays for it: it has no subscription"
    return f"its subscription is not active ({subscription.get_status_display().lower()})"


def apply_plan_to_agents(*, plan: Plan, actor: Any) -> int:
    """Give every live agent on ``plan`` the plan's current limits (after an edit);
    caps their owners had lowered are reset. Returns how many agents it covered."""
    live = Subscription.objects.filter(plan=plan, status__in=HOLDS_PLACE).select_related("agent")
    for subscription in live:
        apply_agent_limits(
            agent=subscription.agent,
            limits=plan.agent_limits(),
            actor=actor,
            source="operator",
            reason=f"{plan.name} plan changed",
        )
    return len(live)
