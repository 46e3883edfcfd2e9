"""Forms of the agent's pages: each field validated here, then again by the service."""

from __future__ import annotations

from django import forms

from agents.conversations import Message, Schedule
from agents.models import MAX_INSTRUCTIONS_CHARS, validate_time_zone


class MessageForm(forms.Form):
    content = forms.CharField(
        label="Message",
        max_length=Message.MAX_OWNER_CHARS,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Ask your agent something"}),
    )


class ScheduleForm(forms.Form):
    cron = forms.CharField(
        label="When (cron, in the agent's time zone)",
        max_length=Schedule.MAX_CRON_CHARS,
        help_text="Five fields: minute hour day month weekday, e.g. 30 7 * * 1-5.",
        widget=forms.TextInput(attrs={"placeholder": "30 7 * * 1-5", "spellcheck": "false"}),
    )
    prompt = forms.CharField(
        label="What to do",
        max_length=Message.MAX_OWNER_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class DeleteForm(forms.Form):
    """Deleting asks for the agent's name, typed: no slip of a finger deletes one."""

    name = forms.CharField(label="Type the agent's name to confirm", max_length=64)

    def __init__(self, *args: object, agent_name: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.agent_name = agent_name

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if name.strip() != self.agent_name:
            raise forms.ValidationError(f"That is not the name of this agent ({self.agent_name}).")
        return name


class InstructionsForm(forms.Form):
    instructions = forms.CharField(
        label="Standing instructions",
        required=False,
        max_length=MAX_INSTRUCTIONS_CHARS,
        help_text="Read by your agent at every run, below the operator's own rules.",
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    time_zone = forms.CharField(
        label="Time zone",
        max_length=64,
        validators=[validate_time_zone],
        help_text="An IANA name, like Europe/Paris; your schedules fire in it.",
    )
