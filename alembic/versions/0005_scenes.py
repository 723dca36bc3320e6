"""scenes: categories, scenes, partner clients, behaviours, reduction and conversion rules,
consents, link codes, partner links (Art. 31–36).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)

# Scene categories are data, editable by the operator; these are the first ones.
CATEGORIES = [
    ("bus", "公交出行", "Bus"),
    ("metro", "轨道交通", "Metro / urban rail"),
    ("shared_bicycle", "共享单车", "Shared bicycle"),
    ("walking", "步行", "Walking"),
    ("e_receipt", "电子票据", "Electronic receipt"),
    ("second_hand", "二手闲置", "Second-hand goods"),
    ("ev_charging", "新能源汽车充电", "Electric-vehicle charging"),
    ("paperless", "无纸化办公", "Paperless services"),
]


def _rule_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("valid_from", TS, nullable=False),
        sa.Column("valid_to", TS, nullable=True),
        sa.Column("basis", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("published_at", TS, nullable=True),
        sa.Column("published_by", sa.Text(), nullable=True),
    ]


def upgrade() -> None:
    categories = op.create_table(
        "scene_categories",
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name_zh", sa.String(100), nullable=False),
        sa.Column("name_en", sa.String(200), nullable=False),
        sa.Column("created_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_scene_categories")),
        sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,31}$'",
                           name=op.f("ck_scene_categories_code_format")),
    )
    op.bulk_insert(categories, [{"code": c, "name_zh": zh, "name_en": en}
                                for c, zh, en in CATEGORIES])

    op.create_table(
        "scenes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name_zh", sa.String(100), nullable=False),
        sa.Column("name_en", sa.String(200), nullable=False),
        sa.Column("category_code", sa.String(32), nullable=False),
        sa.Column("partner_name", sa.String(200), nullable=False),
        sa.Column("partner_credit_code", sa.String(18), nullable=True),
        sa.Column("agreement_ref", sa.String(64), nullable=False),
        sa.Column("agreement_signed_on", sa.Date(), nullable=False),
        sa.Column("agreement_starts_on", sa.Date(), nullable=False),
        sa.Column("agreement_ends_on", sa.Date(), nullable=True),
        sa.Column("claim_window_days", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_changed_at", TS, nullable=False),
        sa.Column("is_demo", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scenes")),
        sa.UniqueConstraint("code", name=op.f("uq_scenes_code")),
        sa.ForeignKeyConstraint(["category_code"], ["scene_categories.code"],
                                name=op.f("fk_scenes_category_code_scene_categories")),
        sa.CheckConstraint("code ~ '^[a-z0-9][a-z0-9_-]{1,31}$'",
                           name=op.f("ck_scenes_code_format")),
        sa.CheckConstraint("status IN ('active', 'suspended', 'ended')",
                           name=op.f("ck_scenes_status_known")),
        sa.CheckConstraint("claim_window_days BETWEEN 1 AND 365",
                           name=op.f("ck_scenes_claim_window_range")),
        sa.CheckConstraint(
            "agreement_ends_on IS NULL OR agreement_ends_on >= agreement_starts_on",
            name=op.f("ck_scenes_agreement_dates_ordered"),
        ),
    )
    op.create_index(op.f("ix_scenes_category_code"), "scenes", ["category_code"])

    op.create_table(
        "scene_clients",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("scene_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_scene_clients")),
        sa.ForeignKeyConstraint(["scene_id"], ["scenes.id"],
                                name=op.f("fk_scene_clients_scene_id_scenes")),
    )
    op.create_index(op.f("ix_scene_clients_scene_id"), "scene_clients", ["scene_id"])

    op.create_table(
        "scene_behaviours",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scene_id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(48), nullable=False),
        sa.Column("name_zh", sa.String(100), nullable=False),
        sa.Column("name_en", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scene_behaviours")),
        sa.ForeignKeyConstraint(["scene_id"], ["scenes.id"],
                                name=op.f("fk_scene_behaviours_scene_id_scenes")),
        sa.UniqueConstraint("scene_id", "code", name="uq_scene_behaviours_scene_code"),
        sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,47}$'",
                           name=op.f("ck_scene_behaviours_code_format")),
    )

    op.create_table(
        "reduction_rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scene_id", sa.Uuid(), nullable=False),
        sa.Column("behaviour_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("grams_per_unit_milli", sa.BigInteger(), nullable=False),
        sa.Column("max_quantity_milli", sa.BigInteger(), nullable=True),
        sa.Column("cap_grams_per_event", sa.BigInteger(), nullable=True),
        sa.Column("cap_grams_per_day", sa.BigInteger(), nullable=True),
        sa.Column("cap_grams_per_year", sa.BigInteger(), nullable=True),
        sa.Column("superseded_by", sa.Uuid(), nullable=True),
        *_rule_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reduction_rules")),
        sa.ForeignKeyConstraint(["scene_id"], ["scenes.id"],
                                name=op.f("fk_reduction_rules_scene_id_scenes")),
        sa.ForeignKeyConstraint(["behaviour_id"], ["scene_behaviours.id"],
                                name=op.f("fk_reduction_rules_behaviour_id_scene_behaviours")),
        sa.ForeignKeyConstraint(["superseded_by"], ["reduction_rules.id"],
                                name=op.f("fk_reduction_rules_superseded_by_reduction_rules")),
        sa.UniqueConstraint("behaviour_id", "version",
                            name="uq_reduction_rules_behaviour_version"),
        sa.CheckConstraint("status IN ('draft', 'published')",
                           name=op.f("ck_reduction_rules_status_known")),
        sa.CheckConstraint("grams_per_unit_milli > 0",
                           name=op.f("ck_reduction_rules_factor_positive")),
        sa.CheckConstraint("max_quantity_milli IS NULL OR max_quantity_milli > 0",
                           name=op.f("ck_reduction_rules_max_quantity_positive")),
        sa.CheckConstraint("cap_grams_per_event IS NULL OR cap_grams_per_event > 0",
                           name=op.f("ck_reduction_rules_cap_event_positive")),
        sa.CheckConstraint("cap_grams_per_day IS NULL OR cap_grams_per_day > 0",
                           name=op.f("ck_reduction_rules_cap_day_positive")),
        sa.CheckConstraint("cap_grams_per_year IS NULL OR cap_grams_per_year > 0",
                           name=op.f("ck_reduction_rules_cap_year_positive")),
        sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from",
                           name=op.f("ck_reduction_rules_window_ordered")),
        sa.CheckConstraint("unit ~ '^[a-z][a-z0-9_]{0,31}$'",
                           name=op.f("ck_reduction_rules_unit_format")),
        sa.CheckConstraint("(status = 'published') = (version IS NOT NULL)",
                           name=op.f("ck_reduction_rules_published_has_version")),
    )
    op.create_index("ix_reduction_rules_lookup", "reduction_rules",
                    ["scene_id", "behaviour_id", "status", "valid_from"])

    op.create_table(
        "conversion_rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("grams_per_point", sa.BigInteger(), nullable=False),
        sa.Column("superseded_by", sa.Uuid(), nullable=True),
        *_rule_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversion_rules")),
        sa.ForeignKeyConstraint(["superseded_by"], ["conversion_rules.id"],
                                name=op.f("fk_conversion_rules_superseded_by_conversion_rules")),
        sa.UniqueConstraint("version", name="uq_conversion_rules_version"),
        sa.CheckConstraint("status IN ('draft', 'published')",
                           name=op.f("ck_conversion_rules_status_known")),
        sa.CheckConstraint("grams_per_point > 0",
                           name=op.f("ck_conversion_rules_factor_positive")),
        sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from",
                           name=op.f("ck_conversion_rules_window_ordered")),
        sa.CheckConstraint("(status = 'published') = (version IS NOT NULL)",
                           name=op.f("ck_conversion_rules_published_has_version")),
    )
    # Belt and braces beside the service's lock: published conversion windows never overlap.
    op.execute(
        "ALTER TABLE conversion_rules ADD CONSTRAINT ex_conversion_rules_no_overlap "
        "EXCLUDE USING gist (tstzrange(valid_from, valid_to, '[)') WITH &&) "
        "WHERE (status = 'published')"
    )

    op.create_table(
        "consents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("citizen_id", sa.Uuid(), nullable=False),
        sa.Column("scene_id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("privacy_notice_version", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("granted_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consents")),
        sa.ForeignKeyConstraint(["citizen_id"], ["citizens.id"],
                                name=op.f("fk_consents_citizen_id_citizens")),
        sa.ForeignKeyConstraint(["scene_id"], ["scenes.id"],
                                name=op.f("fk_consents_scene_id_scenes")),
        sa.CheckConstraint("revoked_at IS NULL OR revoked_at >= granted_at",
                           name=op.f("ck_consents_revoked_after")),
        sa.CheckConstraint("scope ~ '^[a-z][a-z0-9_.:-]{0,63}$'",
                           name=op.f("ck_consents_scope_format")),
        sa.CheckConstraint("channel ~ '^[a-z][a-z0-9_]{0,31}$'",
                           name=op.f("ck_consents_channel_format")),
    )
    op.create_index("ix_consents_citizen_scene", "consents",
                    ["citizen_id", "scene_id", "granted_at"])
    op.create_index("uq_consents_one_active", "consents", ["citizen_id", "scene_id"],
                    unique=True, postgresql_where=sa.text("revoked_at IS NULL"))

    op.create_table(
        "link_codes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(), nullable=False),
        sa.Column("consent_id", sa.Uuid(), nullable=False),
        sa.Column("citizen_id", sa.Uuid(), nullable=False),
        sa.Column("scene_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_link_codes_code_hash")),
        sa.ForeignKeyConstraint(["consent_id"], ["consents.id"],
                                name=op.f("fk_link_codes_consent_id_consents")),
        sa.ForeignKeyConstraint(["citizen_id"], ["citizens.id"],
                                name=op.f("fk_link_codes_citizen_id_citizens")),
        sa.ForeignKeyConstraint(["scene_id"], ["scenes.id"],
                                name=op.f("fk_link_codes_scene_id_scenes")),
    )
    op.create_index(op.f("ix_link_codes_consent_id"), "link_codes", ["consent_id"])

    op.create_table(
        "partner_links",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scene_id", sa.Uuid(), nullable=False),
        sa.Column("citizen_id", sa.Uuid(), nullable=False),
        sa.Column("partner_user_ref", sa.String(128), nullable=False),
        sa.Column("consent_id", sa.Uuid(), nullable=False),
        sa.Column("linked_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_links")),
        sa.ForeignKeyConstraint(["scene_id"], ["scenes.id"],
                                name=op.f("fk_partner_links_scene_id_scenes")),
        sa.ForeignKeyConstraint(["citizen_id"], ["citizens.id"],
                                name=op.f("fk_partner_links_citizen_id_citizens")),
        sa.ForeignKeyConstraint(["consent_id"], ["consents.id"],
                                name=op.f("fk_partner_links_consent_id_consents")),
        sa.UniqueConstraint("scene_id", "partner_user_ref", name="uq_partner_links_scene_ref"),
        sa.UniqueConstraint("scene_id", "citizen_id", name="uq_partner_links_scene_citizen"),
    )

    # Published rule versions are immutable; the only change allowed is closing an open end
    # once, when the successor is published. Published versions are never deleted.
    op.execute(
        """
        CREATE FUNCTION scenes_published_rule_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'DELETE' THEN
            IF OLD.status = 'published' THEN
              RAISE EXCEPTION 'published rule % is immutable', OLD.id
                USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            RETURN OLD;
          END IF;
          IF OLD.status = 'published' THEN
            IF OLD.valid_to IS NULL AND NEW.valid_to IS NOT NULL
               AND NEW.superseded_by IS NOT NULL
               AND (to_jsonb(NEW) - 'valid_to' - 'superseded_by')
                   = (to_jsonb(OLD) - 'valid_to' - 'superseded_by') THEN
              RETURN NEW;
            END IF;
            RAISE EXCEPTION 'published rule % is immutable', OLD.id
              USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          RETURN NEW;
        END $$;
        """
    )
    for table in ("reduction_rules", "conversion_rules"):
        op.execute(
            f"CREATE TRIGGER {table}_published_immutable BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION scenes_published_rule_guard()"
        )
    # Consent records are never deleted; the only change is a revocation timestamp, once.
    op.execute(
        """
        CREATE FUNCTION scenes_consent_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'consent records are never deleted'
              USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          IF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
             AND (to_jsonb(NEW) - 'revoked_at') = (to_jsonb(OLD) - 'revoked_at') THEN
            RETURN NEW;
          END IF;
          RAISE EXCEPTION 'a consent record changes only by its revocation'
            USING ERRCODE = 'integrity_constraint_violation';
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER consents_append_only BEFORE UPDATE OR DELETE ON consents "
        "FOR EACH ROW EXECUTE FUNCTION scenes_consent_guard()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS consents_append_only ON consents")
    op.execute("DROP TRIGGER IF EXISTS conversion_rules_published_immutable ON conversion_rules")
    op.execute("DROP TRIGGER IF EXISTS reduction_rules_published_immutable ON reduction_rules")
    op.execute("DROP FUNCTION IF EXISTS scenes_consent_guard()")
    op.execute("DROP FUNCTION IF EXISTS scenes_published_rule_guard()")
    for table in ("partner_links", "link_codes", "consents", "conversion_rules",
                  "reduction_rules", "scene_behaviours", "scene_clients", "scenes",
                  "scene_categories"):
        op.drop_table(table)
