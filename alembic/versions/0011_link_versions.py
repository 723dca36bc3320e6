"""scenes: a version of each scene's links and consents, and the log of what changed, so
ingestion can cache link lookups and still see a revocation on the next batch (Art. 34).

Every insert, update or delete of a ``consents`` or ``partner_links`` row bumps
``scenes.links_version`` of its scene and logs ``(scene, version, citizen, partner_user_ref)``
in ``scene_link_changes``: a cache tagged with version N reads the changes after N and drops
exactly those citizens' (and refs') entries. ``partner_user_ref`` is logged for link rows so
that a cached "not linked" answer for a ref is dropped when that ref gets linked.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One statement per string: the driver prepares each one, and a prepared statement is single.
UPGRADE = (
    "ALTER TABLE scenes ADD COLUMN links_version bigint NOT NULL DEFAULT 0",
    """
-- One row per version: an update that moves a row to another citizen, ref or scene logs the
-- old and the new side under two versions. Trimmed after a day (scenes.lookup); a cache
-- further behind than the log reaches drops the scene's entries.
CREATE TABLE scene_link_changes (
    scene_id uuid NOT NULL,
    version bigint NOT NULL,
    citizen_id uuid NOT NULL,
    partner_user_ref varchar(128),
    changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_scene_link_changes PRIMARY KEY (scene_id, version)
)""",
    "CREATE INDEX ix_scene_link_changes_changed_at ON scene_link_changes (changed_at)",
    """
-- The UPDATE takes the scene row's lock until the writer commits, so the writers of one
-- scene's links and consents queue on it and commit in version order: a reader that sees
-- version N committed also sees every change up to N (their log rows commit with them).
-- A sequence would be wrong: numbers drawn from it commit in any order, so a reader could
-- see 7 while 6 is still to commit, tag its cache with 7 and never learn of 6.
CREATE FUNCTION scenes_link_change(p_scene uuid, p_citizen uuid, p_ref varchar)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v bigint;
BEGIN
  UPDATE scenes SET links_version = links_version + 1 WHERE id = p_scene
    RETURNING links_version INTO v;
  IF v IS NOT NULL THEN
    INSERT INTO scene_link_changes (scene_id, version, citizen_id, partner_user_ref)
    VALUES (p_scene, v, p_citizen, p_ref);
  END IF;
END $$""",
    """
CREATE FUNCTION scenes_consents_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM scenes_link_change(NEW.scene_id, NEW.citizen_id, NULL);
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM scenes_link_change(OLD.scene_id, OLD.citizen_id, NULL);
  ELSE
    PERFORM scenes_link_change(OLD.scene_id, OLD.citizen_id, NULL);
    IF (NEW.scene_id, NEW.citizen_id) IS DISTINCT FROM (OLD.scene_id, OLD.citizen_id) THEN
      PERFORM scenes_link_change(NEW.scene_id, NEW.citizen_id, NULL);
    END IF;
  END IF;
  RETURN NULL;
END $$""",
    """
CREATE FUNCTION scenes_partner_links_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM scenes_link_change(NEW.scene_id, NEW.citizen_id, NEW.partner_user_ref);
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM scenes_link_change(OLD.scene_id, OLD.citizen_id, OLD.partner_user_ref);
  ELSE
    PERFORM scenes_link_change(OLD.scene_id, OLD.citizen_id, OLD.partner_user_ref);
    IF (NEW.scene_id, NEW.citizen_id, NEW.partner_user_ref)
       IS DISTINCT FROM (OLD.scene_id, OLD.citizen_id, OLD.partner_user_ref) THEN
      PERFORM scenes_link_change(NEW.scene_id, NEW.citizen_id, NEW.partner_user_ref);
    END IF;
  END IF;
  RETURN NULL;
END $$""",
    # Deferred to the commit: the scene's row is then locked only while the writer commits,
    # not for the rest of its transaction (a citizen's consent waits on no other's work).
    "CREATE CONSTRAINT TRIGGER consents_links_version "
    "AFTER INSERT OR UPDATE OR DELETE ON consents DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION scenes_consents_changed()",
    "CREATE CONSTRAINT TRIGGER partner_links_links_version "
    "AFTER INSERT OR UPDATE OR DELETE ON partner_links DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION scenes_partner_links_changed()",
)

DOWNGRADE = (
    "DROP TRIGGER IF EXISTS partner_links_links_version ON partner_links",
    "DROP TRIGGER IF EXISTS consents_links_version ON consents",
    "DROP FUNCTION IF EXISTS scenes_partner_links_changed()",
    "DROP FUNCTION IF EXISTS scenes_consents_changed()",
    "DROP FUNCTION IF EXISTS scenes_link_change(uuid, uuid, varchar)",
    "DROP TABLE IF EXISTS scene_link_changes",
    "ALTER TABLE scenes DROP COLUMN IF EXISTS links_version",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
