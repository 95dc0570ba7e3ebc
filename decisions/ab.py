"""Champion vs challenger on the same signals: the evidence for a promotion (a read-only selector).

While a challenger is served, the subscriber scores every stream signal with both versions and
stores the challenger's decision (role ``challenger``, never published) next to the champion's,
keyed by the same stream entry id. :func:`ab_report` compares them per (champion, challenger)
version pair: how often they agree, each one's action mix, the confusion table, and the realised
outcomes of the signals whose position has closed (the Experience paired with the champion's
decision). The challenger never traded, so its outcome is an estimate from the same close:
the realised result when it chose the same direction as the champion, its negation when it chose
the opposite direction (LONG vs SHORT), and 0 when it would not have entered (HOLD, REDUCE, CLOSE,
EMERGENCY_FLATTEN). Closes of champion decisions that did not enter (not LONG or SHORT) are not
counted in that estimate.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection

from training.rl.actions import ACTION_NAMES, Action

from .models import Decision, Experience, ModelRole

# Direction of a position an action opens: the basis of the challenger's outcome estimate.
_DIRECTION = {Action.LONG: 1, Action.SHORT: -1}


def _pair_rows(since: datetime | None) -> list[tuple]:
    """(champion version, challenger version, champion action, challenger action, signals,
    closed, pnl sum, reward sum, wins) grouped; one query joining the two roles on the entry id."""
    decision = connection.ops.quote_name(Decision._meta.db_table)
    experience = connection.ops.quote_name(Experience._meta.db_table)
    where, params = "", [ModelRole.CHAMPION, ModelRole.CHALLENGER]
    if since is not None:
        where = "AND ch.created_at >= %s"
        params.append(since)
    sql = f"""
        SELECT c.model_version, ch.model_version, c.action, ch.action, COUNT(*), COUNT(e.id),
               COALESCE(SUM(e.pnl), 0), COALESCE(SUM(e.reward), 0),
               COALESCE(SUM(CASE WHEN e.pnl > 0 THEN 1 ELSE 0 END), 0)
        FROM {decision} ch
        JOIN {decision} c ON c.stream_entry_id = ch.stream_entry_id AND c.role = %s
        LEFT JOIN {experience} e ON e.decision_id = c.decision_id
        WHERE ch.role = %s AND ch.stream_entry_id IS NOT NULL {where}
        GROUP BY c.model_version, ch.model_version, c.action, ch.action
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _outcome(closed: int, pnl: float, reward: float, wins: int | None = None) -> dict:
    out = {"closed": closed, "total_pnl": round(pnl, 8), "mean_reward": round(reward / closed, 8) if closed else None}
    if wins is not None:
        out["win_rate"] = round(wins / closed, 6) if closed else None
    return out


def ab_report(since: datetime | None = None) -> dict:
    """Champion vs challenger per version pair, newest pairs first (see the module docstring).

    ``since`` limits the comparison to challenger decisions made at or after that time. Each
    comparison: ``signals`` scored by both, ``agreement_rate`` (same action), ``champion_actions``
    and ``challenger_actions`` (counts by action name), ``confusion`` (champion action -> challenger
    action -> count), and ``outcomes`` over the closed ones: the champion's realised PnL (quote
    currency), mean reward and win rate, the same split by agreement, and the challenger's estimate.
    """
    pairs: dict[tuple[str, str], dict] = {}
    for champ_v, chall_v, champ_a, chall_a, n, closed, pnl, reward, wins in _pair_rows(since):
        p = pairs.setdefault((champ_v, chall_v), {
            "signals": 0, "agreed": 0, "champion_actions": dict.fromkeys(ACTION_NAMES, 0),
            "challenger_actions": dict.fromkeys(ACTION_NAMES, 0), "confusion": {},
            "closed": [0, 0.0, 0.0, 0], "agreed_closed": [0, 0.0, 0.0], "disagreed_closed": [0, 0.0, 0.0],
            "estimate": [0, 0.0, 0.0],
        })
        champ_name, chall_name = ACTION_NAMES[champ_a], ACTION_NAMES[chall_a]
        p["signals"] += n
        p["champion_actions"][champ_name] += n
        p["challenger_actions"][chall_name] += n
        p["confusion"].setdefault(champ_name, {})[chall_name] = n
        for i, x in enumerate((closed, pnl, reward, wins)):
            p["closed"][i] += x
        bucket = p["agreed_closed"] if champ_a == chall_a else p["disagreed_closed"]
        for i, x in enumerate((closed, pnl, reward)):
            bucket[i] += x
        if champ_a == chall_a:
            p["agreed"] += n
        if closed and champ_a in _DIRECTION:
            factor = _DIRECTION[champ_a] * _DIRECTION.get(chall_a, 0)
            for i, x in enumerate((closed, factor * pnl, factor * reward)):
                p["estimate"][i] += x
    comparisons = []
    for (champ_v, chall_v), p in pairs.items():
        comparisons.append({
            "champion_version": champ_v,
            "challenger_version": chall_v,
            "signals": p["signals"],
            "agreement_rate": round(p["agreed"] / p["signals"], 6),
            "champion_actions": p["champion_actions"],
            "challenger_actions": p["challenger_actions"],
            "confusion": p["confusion"],
            "outcomes": {
                "champion": _outcome(*p["closed"]),
                "when_agreed": _outcome(*p["agreed_closed"]),
                "when_disagreed": _outcome(*p["disagreed_closed"]),
                "challenger_estimate": _outcome(*p["estimate"]),
            },
        })
    comparisons.sort(key=lambda c: (_version_key(c["challenger_version"]), _version_key(c["champion_version"])), reverse=True)
    return {"since": since.isoformat() if since else None, "comparisons": comparisons}


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
