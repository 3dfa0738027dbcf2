"""`registry projections retry|skip`: what an operator does about a partition that stopped on an
event it cannot apply (shown as FAILED by `registry status`)."""

from __future__ import annotations

import click

from projections.errors import ProjectionError
from registry.cli.common import emit_json, fail, load_settings, run
from registry.service.operations import operator, pending_event, retry_failed, skip_event

#: a skip refused (not the partition's next event, no such partition): nothing changed
EXIT_REFUSED = 3


@click.group()
def projections() -> None:
    """Retry or skip the event a failed projection partition stopped on."""


@projections.command()
@click.argument("projection", required=False)
@click.option("--partition", type=click.IntRange(0), default=None, help="Only this partition.")
@click.option("--json", "as_json", is_flag=True, help="Print the failures cleared as JSON.")
def retry(projection: str | None, partition: int | None, as_json: bool) -> None:
    """Clear the failure of PROJECTION's failed partitions (every projection's when omitted):
    the projector holding each tries its event again, with a fresh count of attempts. Fix the
    cause first (a master key, the app's model)."""

    if partition is not None and projection is None:
        fail("--partition needs a PROJECTION", 2)
    settings = load_settings()
    try:
        cleared = run(lambda: retry_failed(settings, projection, partition))
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"cannot retry: {exc}")
    if as_json:
        emit_json(cleared)
        return
    if not cleared:
        click.echo("no failed partition to retry")
    for f in cleared:
        click.echo(
            f"projection {f['name']} partition {f['partition']}: failure at position "
            f"{f['position']} cleared; the projector tries it again"
        )


@projections.command()
@click.argument("projection")
@click.option("--partition", type=click.IntRange(0), required=True)
@click.option("--position", type=click.IntRange(1), required=True, help="The event to skip.")
@click.option("--reason", required=True, help="Why it is skipped (kept with the record).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the skip record as JSON.")
def skip(
    projection: str, partition: int, position: int, reason: str, yes: bool, as_json: bool
) -> None:
    """Skip exactly one event: the one at POSITION, which must be the next event PARTITION of
    PROJECTION applies (the one it failed on). The event stays in the log but is never
    applied to this projection; the skip is recorded (who, when, why) and listed by
    `registry status`. A replay applies the event again."""

    settings = load_settings()
    if not yes:
        try:
            event = run(lambda: pending_event(settings, projection, partition))
        except ProjectionError as exc:
            fail(str(exc), EXIT_REFUSED)
        except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
            fail(f"cannot read partition {partition} of {projection!r}: {exc}")
        failure = event["failure"]
        click.echo(
            f"partition {partition} of {projection} applies next: position {event['position']}, "
            f"{event['event_type']} of stream {event['stream_id']} v{event['stream_version']}"
        )
        if failure is not None:
            click.echo(f"it failed {failure['attempts']} times: {failure['reason']}")
        if event["position"] != position:
            fail(f"position {position} is not the next event of that partition", EXIT_REFUSED)
        click.confirm(f"Skip this event? It will never be applied to {projection}", abort=True)
    try:
        record = run(
            lambda: skip_event(
                settings, projection, partition, position, by=operator(), note=reason
            )
        )
    except ProjectionError as exc:
        fail(str(exc), EXIT_REFUSED)
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"cannot skip: {exc}")
    if as_json:
        emit_json(record)
        return
    click.echo(
        f"skipped position {record['position']} of {projection} partition {partition} "
        f"({record['event_type']} of stream {record['stream_id']} v{record['stream_version']}); "
        f"recorded as skipped by {record['skipped_by']}"
    )
