"""`manage.py rlv3_subscribe`: the Redis Streams subscriber (see decisions.streams.consumer).

Runs until SIGTERM/SIGINT, which finish the current batch (persist, publish, ack) and exit 0.
``--once`` drains what is there (own pending entries included) and exits: the testable mode.
"""

from __future__ import annotations

import os

# A decision batch is a few hundred rows: BLAS worker threads would only spin against the database
# for the machine's cores (and add memory). Set before numpy is first imported, just below.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from django.core.management.base import BaseCommand, CommandError  # noqa: E402

from decisions.streams.consumer import ConsumerConfig, StreamConsumer  # noqa: E402
from rlv3site.memory import freeze_startup_objects  # noqa: E402


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Consume signal.generated, market.data_updated and position.closed; publish rl_v3.decision events."

    def add_arguments(self, parser):
        parser.add_argument("--consumer", help="Consumer name within the groups (default: <host>-<pid>). Reuse it "
                            "across restarts to pick up this consumer's pending entries at once.")
        parser.add_argument("--batch", type=_positive, default=256, help="Entries read per stream per batch (XREADGROUP COUNT).")
        parser.add_argument("--block-ms", type=_positive, default=2000, help="How long one read waits for new entries (XREADGROUP BLOCK).")
        parser.add_argument("--once", action="store_true", help="Drain the streams (pending entries included), then exit.")

    def handle(self, *args, consumer, batch, block_ms, once, **options):
        if batch > 10_000:
            raise CommandError("--batch must be at most 10000")
        config = ConsumerConfig.from_settings(consumer=consumer, batch=batch, block_ms=block_ms)
        subscriber = StreamConsumer(config)
        subscriber.install_signal_handlers()
        # Everything imported so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which would otherwise walk it and stall a batch now and then.
        freeze_startup_objects()
        self.stdout.write(
            f"rlv3_subscribe: consumer {config.consumer} on {config.stream_prefix}{{market.data_updated,signal.generated,"
            f"position.closed}} (batch {batch}, block {block_ms} ms{', once' if once else ''})"
        )
        stats = subscriber.run(once=once)
        self.stdout.write(
            f"rlv3_subscribe: stopped; processed {stats.processed}, published {stats.published}, "
            f"dead-lettered {stats.dead_lettered}, transient failures {stats.retries}"
        )
