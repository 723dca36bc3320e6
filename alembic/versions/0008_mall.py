"""mall: merchants, stores, offers, vouchers, per-citizen limit counters.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = postgresql.UUID(as_uuid=True)
TS = sa.DateTime(timezone=True)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


MERCHANT_STATUSES = ("pending", "active", "suspended", "terminated")
STORE_STATUSES = ("open", "closed")
OFFER_STATUSES = ("draft", "on_sale", "paused", "ended")
VOUCHER_STATUSES = ("issued", "used", "cancelled", "expired")
CATEGORIES = ("transport", "food", "retail", "culture", "services", "public_welfare", "other")


def upgrade() -> None:
    op.create_table(
        "mall_merchants",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("name_en", sa.Text),
        sa.Column("credit_code", sa.Text),
        sa.Column("contact_name", sa.Text, nullable=False),
        sa.Column("contact_phone_enc", sa.LargeBinary),
        sa.Column("contact_phone_masked", sa.Text),
        sa.Column("agreement_no", sa.Text, nullable=False),
        sa.Column("agreement_signed_on", sa.Date, nullable=False),
        sa.Column("agreement_expires_on", sa.Date),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("is_demo", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(_in("status", MERCHANT_STATUSES), name="ck_mall_merchants_status"),
        sa.UniqueConstraint("agreement_no", name="uq_mall_merchants_agreement_no"),
    )
    op.create_table(
        "mall_stores",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("merchant_id", UUID, sa.ForeignKey("mall_merchants.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("district_code", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(_in("status", STORE_STATUSES), name="ck_mall_stores_status"),
    )
    op.create_index("ix_mall_stores_merchant_id", "mall_stores", ["merchant_id"])
    op.create_table(
        "mall_offers",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("merchant_id", UUID, sa.ForeignKey("mall_merchants.id"), nullable=False),
        sa.Column("title_zh", sa.Text, nullable=False),
        sa.Column("title_en", sa.Text, nullable=False),
        sa.Column("description_zh", sa.Text, nullable=False),
        sa.Column("description_en", sa.Text, nullable=False),
        sa.Column("image_url", sa.Text),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("price_points", sa.Integer, nullable=False),
        sa.Column("stock_total", sa.Integer, nullable=False),
        sa.Column("stock_left", sa.Integer, nullable=False),
        sa.Column("limit_per_citizen", sa.Integer),
        sa.Column("limit_per_citizen_per_day", sa.Integer),
        sa.Column("sale_starts_at", TS, nullable=False),
        sa.Column("sale_ends_at", TS),
        sa.Column("voucher_validity_s", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("is_demo", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(_in("status", OFFER_STATUSES), name="ck_mall_offers_status"),
        sa.CheckConstraint(_in("category", CATEGORIES), name="ck_mall_offers_category"),
        sa.CheckConstraint("price_points > 0", name="ck_mall_offers_price_positive"),
        sa.CheckConstraint(
            "stock_left >= 0 AND stock_left <= stock_total", name="ck_mall_offers_stock_range"
        ),
        sa.CheckConstraint(
            "limit_per_citizen IS NULL OR limit_per_citizen > 0", name="ck_mall_offers_limit"
        ),
        sa.CheckConstraint(
            "limit_per_citizen_per_day IS NULL OR limit_per_citizen_per_day > 0",
            name="ck_mall_offers_day_limit",
        ),
        sa.CheckConstraint("voucher_validity_s > 0", name="ck_mall_offers_validity"),
        sa.CheckConstraint(
            "sale_ends_at IS NULL OR sale_ends_at > sale_starts_at", name="ck_mall_offers_window"
        ),
    )
    op.create_index("ix_mall_offers_merchant_id", "mall_offers", ["merchant_id"])
    op.create_index("ix_mall_offers_browse", "mall_offers", ["status", "created_at", "id"])
    op.create_table(
        "mall_vouchers",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("offer_id", UUID, sa.ForeignKey("mall_offers.id"), nullable=False),
        sa.Column("merchant_id", UUID, sa.ForeignKey("mall_merchants.id"), nullable=False),
        sa.Column("citizen_id", UUID, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("price_points", sa.Integer, nullable=False),
        sa.Column("hold_id", UUID, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("issued_on", sa.Date, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("store_id", UUID, sa.ForeignKey("mall_stores.id")),
        sa.Column("verified_by", sa.Text),
        sa.Column("voided_at", TS),
        sa.Column("request_key", sa.Text),
        sa.CheckConstraint(_in("status", VOUCHER_STATUSES), name="ck_mall_vouchers_status"),
        sa.CheckConstraint("price_points > 0", name="ck_mall_vouchers_price_positive"),
        sa.CheckConstraint(
            "(status = 'used') = (used_at IS NOT NULL)", name="ck_mall_vouchers_used_at"
        ),
        sa.UniqueConstraint("code", name="uq_mall_vouchers_code"),
        sa.UniqueConstraint("hold_id", name="uq_mall_vouchers_hold_id"),
        sa.UniqueConstraint("citizen_id", "request_key", name="uq_mall_vouchers_request_key"),
    )
    op.create_index("ix_mall_vouchers_citizen", "mall_vouchers", ["citizen_id", "issued_at", "id"])
    op.create_index("ix_mall_vouchers_offer", "mall_vouchers", ["offer_id"])
    op.create_index(
        "ix_mall_vouchers_merchant_used",
        "mall_vouchers",
        ["merchant_id", "used_at"],
        postgresql_where=sa.text("status = 'used'"),
    )
    op.create_index(
        "ix_mall_vouchers_due",
        "mall_vouchers",
        ["expires_at"],
        postgresql_where=sa.text("status = 'issued'"),
    )
    op.create_table(
        "mall_limit_counters",
        sa.Column("citizen_id", UUID, primary_key=True),
        sa.Column("offer_id", UUID, sa.ForeignKey("mall_offers.id"), primary_key=True),
        sa.Column("period", sa.Text, primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.CheckConstraint("n >= 0", name="ck_mall_limit_counters_n_non_negative"),
    )


def downgrade() -> None:
    op.drop_table("mall_limit_counters")
    op.drop_table("mall_vouchers")
    op.drop_table("mall_offers")
    op.drop_table("mall_stores")
    op.drop_table("mall_merchants")
