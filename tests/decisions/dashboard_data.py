"""Real data for the dashboard tests and its screenshot: short trainings and a replayed market day.

:func:`train_champion_and_challenger` runs two short PPO trainings through the training pipeline
(``training.services.training_run_execute``: train, evaluate, register, gate) on a bundled dataset,
and makes sure one version is champion and the other challenger.

:func:`replay_market_day` replays the last bars of the bundled datasets through the stream path in
the wire format: a ``market.data_updated`` tick and a ``signal.generated`` (the bar's observation
fields) per bar, the subscriber decides (champion and challenger), then every LONG or SHORT is
closed a few bars later at the dataset's price with a ``position.closed``, and a few poison entries
become dead letters. The decisions are then spread over the last 24 hours in bar order, so the
per-minute chart shows a day rather than one busy minute.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from decisions.models import Decision, ModelRole
from decisions.streams import codec
from tests.decisions.stream_helpers import consumer, drain, publish
from training.models import AliasName, ModelVersion, TrainingRun
from training.rl.actions import Action
from training.rl.data import load_dataset
from training.rl.env import market_table

# symbol -> (bundled dataset, bars replayed)
REPLAY = {"GOOGL": ("googl_1d", 150), "EURUSD": ("eurusd_1h", 250)}
HOLD_BARS = 5  # a position opened by a decision is closed this many bars later
POSITION_USDT = 1000.0


@dataclass(frozen=True)
class Replayed:
    signals: int
    decisions: int
    closes: int
    dead_letters: int


def train_champion_and_challenger(*, dataset: str = "googl_1d", timesteps: int = 2048) -> tuple[ModelVersion, ModelVersion]:
    """Two short real trainings (seeds 0 and 1); returns (champion, challenger)."""
    from training import services as training_services

    for seed in (0, 1):
        run = TrainingRun.objects.create(dataset=dataset, timesteps=timesteps, seed=seed, config={"ppo": {"n_epochs": 2}})
        result = training_services.training_run_execute(run_id=run.pk, worker="dashboard-fixture")
        assert result["status"] == "succeeded", result
    champion = ModelVersion.objects.get(aliases__name=AliasName.CHAMPION)
    other = ModelVersion.objects.exclude(pk=champion.pk).get()
    # The gate may have promoted the second run: whichever lost is the challenger.
    training_services.alias_set(name=AliasName.CHALLENGER, version=other, reason="dashboard fixture: compare both")
    return champion, other


def _signal_payload(symbol: str, fields: dict) -> dict:
    return {"symbol": symbol, **{k: v for k, v in fields.items() if v is not None}}


def replay_market_day(client, *, now=None) -> Replayed:
    """Replay REPLAY's bars through the streams and the subscriber (see the module docstring)."""
    now = now or timezone.now()
    run_tag = uuid.uuid4().hex[:6]
    bars: dict[str, tuple] = {}  # correlation id -> (symbol, dataset, bar index, position in the day)
    order = []
    for symbol, (name, count) in REPLAY.items():
        data = load_dataset(name)
        table = market_table(data)
        start = len(data) - count - HOLD_BARS
        for i, bar in enumerate(range(start, start + count)):
            moment = now - timedelta(hours=24) + timedelta(hours=24) * (i + 0.5) / count
            tick = codec.MarketTick(symbol=symbol, price=float(data.close[bar]), open=float(data.open[bar]),
                                    high=float(data.high[bar]), low=float(data.low[bar]), close=float(data.close[bar]),
                                    volume=float(data.volume[bar]), timestamp=moment)
            publish(client, codec.MARKET_DATA_UPDATED, codec.market_tick_payload(tick))
            correlation = f"{run_tag}-{symbol}-{i}"
            publish(client, codec.SIGNAL_GENERATED, _signal_payload(symbol, table.fields_at(bar)),
                    correlation_id=correlation, trace_id=uuid.uuid4().hex)
            bars[correlation] = (symbol, data, bar, moment)
            order.append(correlation)
    # Poison entries, as a misbehaving producer sends them
    publish(client, codec.SIGNAL_GENERATED, None, raw={"event_type": codec.SIGNAL_GENERATED, "payload": '{"symbol": "GOOGL", "rsi": '})
    publish(client, codec.SIGNAL_GENERATED, {"symbol": "EURUSD", "rsi": 180.0}, correlation_id=f"{run_tag}-bad-rsi")
    publish(client, codec.POSITION_CLOSED, {"symbol": "TSLA", "pnl": 3.2, "roi": 0.3})
    drain("dashboard-replay")

    champions = {d.correlation_id: d for d in Decision.objects.filter(role=ModelRole.CHAMPION, correlation_id__in=order)}
    closes = 0
    for correlation in order:
        decision = champions.get(correlation)
        if decision is None or decision.action not in (Action.LONG, Action.SHORT):
            continue
        symbol, data, bar, _ = bars[correlation]
        direction = 1.0 if decision.action == Action.LONG else -1.0
        roi = direction * (float(data.close[bar + HOLD_BARS]) / float(data.close[bar]) - 1.0) * 100.0
        close = codec.PositionClose(symbol=symbol, pnl=round(POSITION_USDT * roi / 100.0, 4), roi=round(roi, 6),
                                    position_id=f"pos-{correlation}", decision_id=str(decision.decision_id))
        publish(client, codec.POSITION_CLOSED, codec.position_close_payload(close), correlation_id=correlation)
        closes += 1
    subscriber = consumer("dashboard-replay")
    subscriber.run(once=True)
    # Spread the decisions (both roles) over the day, in bar order, as if they had come live.
    for correlation, (_, _, _, moment) in bars.items():
        Decision.objects.filter(correlation_id=correlation).update(created_at=moment)
    subscriber.heartbeat()  # as a running subscriber reports: state, counts, lag
    dead = client.xlen(codec.stream_key(codec.DEAD_LETTER, settings.RLV3_STREAM_PREFIX))
    return Replayed(signals=len(order), decisions=len(champions), closes=closes, dead_letters=dead)
