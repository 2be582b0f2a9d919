"""When a run of ours fails, someone hears of it: Dagster's e-mail run-failure sensor.

Our own alerts cover a silent participant and a stalled monitor (NODATA, the dead man's
switch), but a failing backfill or retention run, or a monitor run that fails for a reason the
watchdog does not see, would only show in the UI. With ``DICT_RATELIMIT_FAILURE_EMAIL_TO`` set,
every failed run of our jobs sends one e-mail naming the job, the run (a link when
``DICT_RATELIMIT_DAGSTER_UI_URL`` is set), its shard, and the error; unset, there is no sensor.
The SMTP password lives in the code location's memory only, never in a run's config or tags.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import dagster as dg

from dict_ratelimit.defs.tags import SHARD_KEY
from dict_ratelimit.logs import mask_secrets
from dict_ratelimit.settings import Settings

SENSOR_NAME = "email_on_run_failure"
DEFAULT_PORTS = {"SSL": 465, "STARTTLS": 587}


def failure_subject(context: dg.RunFailureSensorContext) -> str:
    """One line the on-call engineer can triage from the inbox."""
    run = context.dagster_run
    shard = run.tags.get(SHARD_KEY)
    where = f" (shard {shard})" if shard else ""
    return f"[dict-ratelimit] {run.job_name}{where} failed: run {run.run_id[:8]}"


def failure_body(context: dg.RunFailureSensorContext, ui_url: str | None) -> str:
    """What failed, where to look, and the error, escaped for the HTML mail Dagster sends."""
    run = context.dagster_run
    lines = [
        f"Job: {run.job_name}",
        f"Run: {run.run_id}",
        *(f"Tag {key}: {value}" for key, value in sorted(run.tags.items())
          if key.startswith("dict_ratelimit/") or key == "dagster/partition"),
        f"Error: {context.failure_event.message or 'see the run'}",
        *(f"Step {event.step_key}: {_first_line(event)}"
          for event in context.get_step_failure_events()),
    ]  # fmt: skip
    body = "<br>".join(html.escape(mask_secrets(line)) for line in lines)
    if ui_url:
        link = f"{ui_url.rstrip('/')}/runs/{run.run_id}"
        body += f'<br><a href="{html.escape(link)}">{html.escape(link)}</a>'
    # Dagster hands the message to smtplib as text, which encodes it as ASCII: an error in
    # Portuguese ("não foi possível") would lose the e-mail; HTML references keep every letter
    return body.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _first_line(event: dg.DagsterEvent) -> str:
    """The step's own error in one line (class and message, not Dagster's wrapper around
    it), at most 500 characters."""
    error = getattr(event.event_specific_data, "error", None)
    while getattr(error, "cause", None) is not None:
        error = error.cause  # type: ignore[union-attr]
    message = (getattr(error, "message", "") or "").strip()
    return (message.splitlines() or ["(no message)"])[0][:500]


def email_on_run_failure(
    settings: Settings, jobs: Sequence[dg.UnresolvedAssetJobDefinition]
) -> dg.SensorDefinition | None:
    """The run-failure sensor of ``jobs``, running from the start; None when no recipient is
    configured (``check_consistency`` has already refused a half-configured sender)."""
    if not settings.failure_email_to:
        return None
    password = settings.failure_email_smtp_password
    smtp_type = settings.failure_email_smtp_type
    ui_url = settings.dagster_ui_url
    return dg.make_email_on_run_failure_sensor(
        name=SENSOR_NAME,
        email_from=settings.failure_email_from or "",
        email_password=password.get_secret_value() if password else "",
        email_to=list(settings.failure_email_to),
        email_subject_fn=failure_subject,
        email_body_fn=lambda context: failure_body(context, ui_url),
        smtp_host=settings.failure_email_smtp_host or "",
        smtp_type=smtp_type,
        smtp_port=settings.failure_email_smtp_port or DEFAULT_PORTS[smtp_type],
        smtp_user=settings.failure_email_smtp_user or settings.failure_email_from,
        monitored_jobs=list(jobs),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
