"""The ledger's SQL: every write is one set-based statement (asyncpg ``$n`` parameters), but
for the credit batch's entries and lots, which are COPYed (``points.binary``).

Lock order everywhere, so concurrent workers, holds and the expiry job never deadlock:
accounts (ascending ``citizen_id``) → holds → lots.
"""

from __future__ import annotations

# Lock the batch's accounts in ascending citizen order, creating the missing ones, and
# return (citizen_id, id, gram_carry) of each: the credit computes with these locked values.
# An account created by this statement is returned by its RETURNING (the statement's own
# snapshot does not see it); one another transaction created after this statement's snapshot
# is missing from the answer, and the caller locks it by a second call.
LOCK_ACCOUNTS = """
WITH created AS (
    INSERT INTO points_accounts (id, citizen_id, created_at)
    SELECT gen_random_uuid(), c, $2 FROM unnest($1::uuid[]) AS c
    WHERE NOT EXISTS (SELECT 1 FROM points_accounts a WHERE a.citizen_id = c)
    ORDER BY c
    ON CONFLICT (citizen_id) DO NOTHING
    RETURNING citizen_id, id, gram_carry
), locked AS (
    SELECT citizen_id, id, gram_carry FROM points_accounts
    WHERE citizen_id = ANY($1::uuid[]) ORDER BY citizen_id FOR UPDATE
)
SELECT citizen_id, id, gram_carry FROM locked
UNION ALL
SELECT citizen_id, id, gram_carry FROM created
"""

# Which of the batch's (scene, event id) are already in the ledger. Each one is one probe of
# the unique index (the LATERAL ... LIMIT 1 cannot become a hash or merge join over the whole
# ledger), so the cost per batch does not grow with the ledger.
LEDGER_DUPLICATES = """
SELECT s.ord
FROM unnest($1::uuid[], $2::text[], $3::int4[]) AS s(scene_id, event_id, ord)
CROSS JOIN LATERAL (
    SELECT 1 FROM points_entries e
    WHERE e.scene_id = s.scene_id AND e.event_id = s.event_id
    LIMIT 1
) d
"""

# The credit batch is written with binary COPY (see ``points.service._write_credits``): entry
# ids are taken from the identity's sequence first: a lot's id is its entry's id.
ENTRY_IDS = """
SELECT array_agg(nextval('points_entries_id_seq')) FROM generate_series(1, $1::int4)
"""

CREDIT_COLUMNS = [
    "id", "account_id", "kind", "points", "created_at", "scene_id", "event_id", "behaviour",
    "occurred_at", "grams", "grams_per_point", "reduction_rule_version_id",
    "conversion_rule_version_id",
]

LOT_COLUMNS = ["account_id", "id", "points", "remaining", "credited_at", "expires_at"]

# Each credited account's new balance and gram carry (the accounts are locked already). The
# integers go as the arrays' text (``app.db.array_text``: cheaper to send and to parse).
ADD_CREDITS = """
UPDATE points_accounts a SET available = a.available + t.pts, gram_carry = t.carry
FROM unnest($1::uuid[], $2::text::int8[], $3::text::int8[]) AS t(id, pts, carry)
WHERE a.id = t.id
"""

ACCOUNT_FOR_UPDATE = """
SELECT id, available, held FROM points_accounts WHERE citizen_id = $1 FOR UPDATE
"""

ACCOUNT_BY_ID_FOR_UPDATE = "SELECT id FROM points_accounts WHERE id = $1 FOR UPDATE"

# Take ``$3`` points from the account's live lots, first-expiring-first, or nothing at all.
# $1 account, $2 now, $3 points, $4 hold id, $5 reference, $6 hold expires_at.
PLACE_HOLD = """
WITH c AS (
    SELECT expires_at, id, remaining,
           (sum(remaining) OVER (ORDER BY expires_at, id
                                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))::int8 AS cum
    FROM points_lots
    WHERE account_id = $1 AND remaining > 0 AND expires_at > $2
), enough AS (
    SELECT coalesce(max(cum), 0) AS live, coalesce(max(cum), 0) >= $3::int8 AS ok FROM c
), take AS (
    SELECT c.expires_at, c.id, least(c.remaining, $3::int8 - (c.cum - c.remaining)) AS pts
    FROM c, enough WHERE enough.ok AND c.cum - c.remaining < $3
), h AS (
    INSERT INTO points_holds (id, account_id, points, status, reference, created_at, expires_at)
    SELECT $4, $1, $3, 'active', $5, $2, $6 FROM enough WHERE ok
    RETURNING id
), upd AS (
    UPDATE points_lots l SET remaining = l.remaining - take.pts
    FROM take WHERE l.account_id = $1 AND l.expires_at = take.expires_at AND l.id = take.id
    RETURNING l.expires_at, l.id, take.pts
), alloc AS (
    INSERT INTO points_hold_allocations (hold_id, account_id, lot_expires_at, lot_id, points)
    SELECT h.id, $1, upd.expires_at, upd.id, upd.pts FROM upd, h
), ent AS (
    INSERT INTO points_entries (account_id, kind, points, created_at, hold_id, reference)
    SELECT $1, 'hold', $3, $2, $4, $5 FROM enough WHERE ok
), acc AS (
    UPDATE points_accounts SET available = available - $3, held = held + $3
    WHERE id = $1 AND (SELECT ok FROM enough)
)
SELECT ok, live FROM enough
"""

HOLD_BY_ID = """
SELECT h.id, a.citizen_id, h.account_id, h.points, h.status, h.expires_at, h.reference
FROM points_holds h JOIN points_accounts a ON a.id = h.account_id
WHERE h.id = $1
"""

HOLD_FOR_UPDATE = HOLD_BY_ID + " FOR UPDATE OF h"

# Release holds (the selection ``{which}`` uses $1 = now, $2 = hold id or NULL): each
# allocation goes back to its lot, unless the lot expired meanwhile, then that part expires.
RELEASE_HOLDS = """
WITH h AS (
    UPDATE points_holds SET status = 'released', closed_at = $1
    WHERE status = 'active' AND {which}
    RETURNING id, account_id, points, reference
), al AS (
    SELECT a.hold_id, a.account_id, a.lot_expires_at, a.lot_id, a.points,
           a.lot_expires_at <= $1 AS lapsed
    FROM points_hold_allocations a
    JOIN h ON h.id = a.hold_id
), lot_upd AS (
    UPDATE points_lots l
    SET remaining = l.remaining + x.back,
        expired = l.expired + x.gone,
        expired_at = CASE WHEN x.gone > 0 THEN coalesce(l.expired_at, $1) ELSE l.expired_at END
    FROM (SELECT account_id, lot_expires_at, lot_id,
                 coalesce((sum(points) FILTER (WHERE NOT lapsed))::int8, 0) AS back,
                 coalesce((sum(points) FILTER (WHERE lapsed))::int8, 0) AS gone
          FROM al GROUP BY account_id, lot_expires_at, lot_id) x
    WHERE l.account_id = x.account_id AND l.expires_at = x.lot_expires_at AND l.id = x.lot_id
), per_hold AS (
    SELECT h.id AS hold_id, h.account_id, h.points, h.reference,
           coalesce((sum(al.points) FILTER (WHERE NOT al.lapsed))::int8, 0) AS back,
           coalesce((sum(al.points) FILTER (WHERE al.lapsed))::int8, 0) AS gone
    FROM h LEFT JOIN al ON al.hold_id = h.id
    GROUP BY h.id, h.account_id, h.points, h.reference
), e_release AS (
    INSERT INTO points_entries (account_id, kind, points, created_at, hold_id, reference)
    SELECT account_id, 'release', back, $1, hold_id, reference FROM per_hold WHERE back > 0
), e_expiry AS (
    INSERT INTO points_entries (account_id, kind, points, created_at, hold_id, reference)
    SELECT account_id, 'expiry', gone, $1, hold_id, reference FROM per_hold WHERE gone > 0
), acc AS (
    UPDATE points_accounts a
    SET available = a.available + t.back, held = a.held - t.held
    FROM (SELECT account_id, (sum(back))::int8 AS back, (sum(points))::int8 AS held
          FROM per_hold GROUP BY account_id) t
    WHERE a.id = t.account_id
)
SELECT hold_id, back, gone FROM per_hold
"""

REDEEM_HOLD = """
WITH h AS (
    UPDATE points_holds SET status = 'redeemed', closed_at = $2
    WHERE id = $1 AND status = 'active'
    RETURNING id, account_id, points, reference
), e AS (
    INSERT INTO points_entries (account_id, kind, points, created_at, hold_id, reference)
    SELECT account_id, 'redemption', points, $2, id, reference FROM h
), acc AS (
    UPDATE points_accounts a SET held = a.held - h.points FROM h WHERE a.id = h.account_id
)
SELECT count(*) FROM h
"""

# Accounts touched by due holds or due lots, locked in the one global order.
LOCK_DUE_ACCOUNTS = """
SELECT a.id FROM points_accounts a
WHERE a.id IN (
    SELECT account_id FROM points_holds WHERE status = 'active' AND expires_at <= $1
    UNION
    SELECT account_id FROM points_lots WHERE remaining > 0 AND expires_at <= $1
)
ORDER BY a.citizen_id
FOR UPDATE
"""

# Expire every due lot's remaining points; one expiry entry per account and run.
EXPIRE_LOTS = """
WITH d AS (
    SELECT account_id, (sum(remaining))::int8 AS pts, count(*) AS n
    FROM points_lots WHERE remaining > 0 AND expires_at <= $1
    GROUP BY account_id
), u AS (
    UPDATE points_lots SET expired = expired + remaining, remaining = 0, expired_at = $1
    WHERE remaining > 0 AND expires_at <= $1
), e AS (
    INSERT INTO points_entries (account_id, kind, points, created_at, reference)
    SELECT account_id, 'expiry', pts, $1, 'lots expired: ' || n FROM d
), acc AS (
    UPDATE points_accounts a SET available = a.available - d.pts FROM d
    WHERE a.id = d.account_id
)
SELECT coalesce((sum(n))::int8, 0)::int8 FROM d
"""

BALANCE = """
SELECT a.available, a.held,
       coalesce((sum(l.remaining) FILTER (WHERE l.expires_at <= $2))::int8, 0) AS due,
       coalesce((sum(l.remaining) FILTER (WHERE l.expires_at > $2))::int8, 0) AS soon
FROM points_accounts a
LEFT JOIN points_lots l
  ON l.account_id = a.id AND l.remaining > 0 AND l.expires_at <= $3
WHERE a.citizen_id = $1
GROUP BY a.id
"""

# Reconciliation: credited = available + held + redeemed + expired; balances = the lots'
# remainders and the active holds; entries replayed give the balances.
CHECK = """
WITH e AS (
    SELECT account_id,
        coalesce((sum(points) FILTER (WHERE kind = 'credit'))::int8, 0) AS credited,
        coalesce((sum(points) FILTER (WHERE kind = 'hold'))::int8, 0) AS held_in,
        coalesce((sum(points) FILTER (WHERE kind = 'release'))::int8, 0) AS released,
        coalesce((sum(points) FILTER (WHERE kind = 'redemption'))::int8, 0) AS redeemed,
        coalesce((sum(points) FILTER (WHERE kind = 'expiry'))::int8, 0) AS expired,
        coalesce((sum(points) FILTER (WHERE kind = 'expiry' AND hold_id IS NOT NULL))::int8, 0)
            AS expired_held
    FROM points_entries GROUP BY account_id
), l AS (
    SELECT account_id, (sum(remaining))::int8 AS remaining, (sum(points))::int8 AS lot_points,
           (sum(expired))::int8 AS lot_expired
    FROM points_lots GROUP BY account_id
), h AS (
    SELECT account_id, (sum(points))::int8 AS held
    FROM points_holds WHERE status = 'active' GROUP BY account_id
), al AS (
    SELECT h.account_id, (sum(x.points))::int8 AS allocated
    FROM points_hold_allocations x JOIN points_holds h ON h.id = x.hold_id
    WHERE h.status = 'active' GROUP BY h.account_id
)
SELECT a.id, a.citizen_id, a.available, a.held,
       coalesce(e.credited, 0) AS credited, coalesce(e.redeemed, 0) AS redeemed,
       coalesce(e.expired, 0) AS expired, coalesce(e.held_in, 0) AS held_in,
       coalesce(e.released, 0) AS released, coalesce(e.expired_held, 0) AS expired_held,
       coalesce(l.remaining, 0) AS lots_remaining, coalesce(l.lot_points, 0) AS lot_points,
       coalesce(l.lot_expired, 0) AS lot_expired,
       coalesce(h.held, 0) AS holds_held, coalesce(al.allocated, 0) AS allocated
FROM points_accounts a
LEFT JOIN e ON e.account_id = a.id
LEFT JOIN l ON l.account_id = a.id
LEFT JOIN h ON h.account_id = a.id
LEFT JOIN al ON al.account_id = a.id
"""
