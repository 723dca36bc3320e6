# ruff: noqa: E501
"""trading and offsets: trading accounts and funds, products, orders, deals, trades, the
exchange's configuration; compliance caps, verified emissions, offset requests, retirements.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('offsets_caps',
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=False),
    sa.Column('cap_bps', sa.Integer(), nullable=False),
    sa.Column('set_by', sa.Text(), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("category IN ('engineering', 'ecological_sink', 'carbon_inclusive')", name=op.f('ck_offsets_caps_category')),
    sa.CheckConstraint('cap_bps >= 0 AND cap_bps <= 10000', name=op.f('ck_offsets_caps_cap')),
    sa.PrimaryKeyConstraint('year', 'category', name=op.f('pk_offsets_caps'))
    )
    op.create_table('offsets_compliance',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('organisation_id', sa.Uuid(), nullable=False),
    sa.Column('account_id', sa.Uuid(), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=False),
    sa.Column('vintage', sa.Integer(), nullable=True),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('lock_id', sa.Uuid(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('decided_by', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancellation_id', sa.Uuid(), nullable=True),
    sa.Column('serials', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('pending', 'confirmed', 'refused')", name=op.f('ck_offsets_compliance_state')),
    sa.CheckConstraint('quantity > 0', name=op.f('ck_offsets_compliance_quantity')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_offsets_compliance'))
    )
    op.create_index('ix_offsets_compliance_entity', 'offsets_compliance', ['organisation_id', 'year', 'category'], unique=False)
    op.create_index('ix_offsets_compliance_pending', 'offsets_compliance', ['created_at'], unique=False, postgresql_where=sa.text("state = 'pending'"))
    op.create_table('offsets_emissions',
    sa.Column('organisation_id', sa.Uuid(), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('verified_tonnes', sa.BigInteger(), nullable=False),
    sa.Column('set_by', sa.Text(), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('verified_tonnes >= 0', name=op.f('ck_offsets_emissions_verified')),
    sa.PrimaryKeyConstraint('organisation_id', 'year', name=op.f('pk_offsets_emissions'))
    )
    op.create_table('offsets_retirements',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('certificate_no', sa.String(length=32), nullable=False),
    sa.Column('organisation_id', sa.Uuid(), nullable=False),
    sa.Column('account_id', sa.Uuid(), nullable=False),
    sa.Column('holder_name', sa.Text(), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=True),
    sa.Column('vintage', sa.Integer(), nullable=True),
    sa.Column('beneficiary', sa.Text(), nullable=False),
    sa.Column('subject_kind', sa.String(length=12), nullable=True),
    sa.Column('subject_public', sa.Text(), nullable=True),
    sa.Column('subject_enc', sa.LargeBinary(), nullable=True),
    sa.Column('emission_tonnes', sa.BigInteger(), nullable=True),
    sa.Column('case_no', sa.Text(), nullable=True),
    sa.Column('court', sa.Text(), nullable=True),
    sa.Column('ordered_tonnes', sa.BigInteger(), nullable=True),
    sa.Column('to_organisation_id', sa.Uuid(), nullable=True),
    sa.Column('cancellation_id', sa.Uuid(), nullable=True),
    sa.Column('serials', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("(kind = 'donation') = (cancellation_id IS NULL)", name=op.f('ck_offsets_retirements_cancelled')),
    sa.CheckConstraint("kind <> 'judicial' OR (category = 'ecological_sink' AND case_no IS NOT NULL AND court IS NOT NULL AND quantity = ordered_tonnes)", name=op.f('ck_offsets_retirements_judicial')),
    sa.CheckConstraint("kind <> 'neutrality' OR quantity >= emission_tonnes", name=op.f('ck_offsets_retirements_neutral')),
    sa.CheckConstraint("kind IN ('neutrality', 'judicial', 'public_good', 'donation')", name=op.f('ck_offsets_retirements_kind')),
    sa.CheckConstraint('quantity > 0', name=op.f('ck_offsets_retirements_quantity')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_offsets_retirements')),
    sa.UniqueConstraint('certificate_no', name=op.f('uq_offsets_retirements_certificate_no'))
    )
    op.create_index('ix_offsets_retirements_kind', 'offsets_retirements', ['kind', 'created_at'], unique=False)
    op.create_index('ix_offsets_retirements_org', 'offsets_retirements', ['organisation_id'], unique=False)
    op.create_table('trading_accounts',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('organisation_id', sa.Uuid(), nullable=False),
    sa.Column('registry_account_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('display_name', sa.Text(), nullable=False),
    sa.Column('legal_name_enc', sa.LargeBinary(), nullable=True),
    sa.Column('id_number_enc', sa.LargeBinary(), nullable=True),
    sa.Column('id_number_index', sa.LargeBinary(), nullable=True),
    sa.Column('phone_enc', sa.LargeBinary(), nullable=True),
    sa.Column('available_fen', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('locked_fen', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('status', sa.String(length=12), server_default='active', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind = 'organisation' OR (legal_name_enc IS NOT NULL AND id_number_enc IS NOT NULL AND id_number_index IS NOT NULL)", name=op.f('ck_trading_accounts_identity')),
    sa.CheckConstraint("kind IN ('organisation', 'individual')", name=op.f('ck_trading_accounts_kind')),
    sa.CheckConstraint("status IN ('active', 'frozen', 'closed')", name=op.f('ck_trading_accounts_status')),
    sa.CheckConstraint('available_fen >= 0', name=op.f('ck_trading_accounts_available')),
    sa.CheckConstraint('locked_fen >= 0', name=op.f('ck_trading_accounts_locked')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_accounts')),
    sa.UniqueConstraint('id_number_index', name=op.f('uq_trading_accounts_id_number_index')),
    sa.UniqueConstraint('organisation_id', name=op.f('uq_trading_accounts_organisation_id')),
    sa.UniqueConstraint('registry_account_id', name=op.f('uq_trading_accounts_registry_account_id'))
    )
    op.create_table('trading_config',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sessions', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('band_bps', sa.Integer(), nullable=False),
    sa.Column('fee_bps', sa.Integer(), nullable=False),
    sa.Column('deal_ttl_s', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.Text(), nullable=False),
    sa.CheckConstraint('band_bps > 0 AND band_bps <= 10000', name=op.f('ck_trading_config_band')),
    sa.CheckConstraint('deal_ttl_s > 0', name=op.f('ck_trading_config_ttl')),
    sa.CheckConstraint('fee_bps >= 0 AND fee_bps < 10000', name=op.f('ck_trading_config_fee')),
    sa.CheckConstraint('id = 1', name=op.f('ck_trading_config_single')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_config'))
    )
    op.create_table('trading_products',
    sa.Column('key', sa.String(length=40), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=False),
    sa.Column('vintage', sa.Integer(), nullable=True),
    sa.Column('ref_price_fen', sa.BigInteger(), nullable=False),
    sa.Column('last_price_fen', sa.BigInteger(), nullable=True),
    sa.Column('last_trade_date', sa.Date(), nullable=True),
    sa.Column('prev_close_fen', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=12), server_default='listed', nullable=False),
    sa.Column('listed_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("category IN ('engineering', 'ecological_sink', 'carbon_inclusive')", name=op.f('ck_trading_products_category')),
    sa.CheckConstraint("status IN ('listed', 'halted')", name=op.f('ck_trading_products_status')),
    sa.CheckConstraint('ref_price_fen > 0', name=op.f('ck_trading_products_ref_price')),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_trading_products'))
    )
    op.create_table('trading_trades',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('method', sa.String(length=12), nullable=False),
    sa.Column('product_key', sa.String(length=40), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=False),
    sa.Column('vintage', sa.Integer(), nullable=True),
    sa.Column('price_fen', sa.BigInteger(), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('fee_fen', sa.BigInteger(), nullable=False),
    sa.Column('buy_order_id', sa.BigInteger(), nullable=True),
    sa.Column('sell_order_id', sa.BigInteger(), nullable=True),
    sa.Column('deal_id', sa.Uuid(), nullable=True),
    sa.Column('buyer_account_id', sa.Uuid(), nullable=False),
    sa.Column('seller_account_id', sa.Uuid(), nullable=False),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('executed_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("method IN ('bidding', 'agreement')", name=op.f('ck_trading_trades_method')),
    sa.CheckConstraint('amount_fen = price_fen * quantity', name=op.f('ck_trading_trades_amount')),
    sa.CheckConstraint('fee_fen >= 0 AND fee_fen <= amount_fen', name=op.f('ck_trading_trades_fee')),
    sa.CheckConstraint('quantity > 0 AND price_fen > 0', name=op.f('ck_trading_trades_terms')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_trades'))
    )
    op.create_index('ix_trading_trades_date', 'trading_trades', ['business_date'], unique=False)
    op.create_index('ix_trading_trades_product_date', 'trading_trades', ['product_key', 'business_date', 'id'], unique=False)
    op.create_table('trading_deals',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('seller_account_id', sa.Uuid(), nullable=False),
    sa.Column('buyer_account_id', sa.Uuid(), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=False),
    sa.Column('vintage', sa.Integer(), nullable=True),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('price_fen', sa.BigInteger(), nullable=False),
    sa.Column('lock_id', sa.Uuid(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('trade_id', sa.BigInteger(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('proposed', 'accepted', 'declined', 'expired', 'withdrawn')", name=op.f('ck_trading_deals_state')),
    sa.CheckConstraint('quantity > 0 AND price_fen > 0', name=op.f('ck_trading_deals_terms')),
    sa.CheckConstraint('seller_account_id <> buyer_account_id', name=op.f('ck_trading_deals_parties')),
    sa.ForeignKeyConstraint(['buyer_account_id'], ['trading_accounts.id'], name=op.f('fk_trading_deals_buyer_account_id_trading_accounts')),
    sa.ForeignKeyConstraint(['seller_account_id'], ['trading_accounts.id'], name=op.f('fk_trading_deals_seller_account_id_trading_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_deals'))
    )
    op.create_index('ix_trading_deals_buyer', 'trading_deals', ['buyer_account_id'], unique=False)
    op.create_index('ix_trading_deals_open', 'trading_deals', ['expires_at'], unique=False, postgresql_where=sa.text("state = 'proposed'"))
    op.create_index('ix_trading_deals_seller', 'trading_deals', ['seller_account_id'], unique=False)
    op.create_table('trading_fund_entries',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('account_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('available_delta', sa.BigInteger(), nullable=False),
    sa.Column('locked_delta', sa.BigInteger(), nullable=False),
    sa.Column('bank_reference', sa.Text(), nullable=True),
    sa.Column('order_id', sa.BigInteger(), nullable=True),
    sa.Column('trade_id', sa.BigInteger(), nullable=True),
    sa.Column('actor', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('deposit', 'withdrawal', 'reserve', 'release', 'pay', 'receive')", name=op.f('ck_trading_fund_entries_kind')),
    sa.ForeignKeyConstraint(['account_id'], ['trading_accounts.id'], name=op.f('fk_trading_fund_entries_account_id_trading_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_fund_entries'))
    )
    op.create_index('ix_trading_fund_entries_account', 'trading_fund_entries', ['account_id', 'id'], unique=False)
    op.create_index('uq_trading_fund_entries_bank_reference', 'trading_fund_entries', ['kind', 'bank_reference'], unique=True, postgresql_where=sa.text('bank_reference IS NOT NULL'))
    op.create_table('trading_orders',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('product_key', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.Uuid(), nullable=False),
    sa.Column('owner_id', sa.Uuid(), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('price_fen', sa.BigInteger(), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('filled', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('reserved_fen', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('lock_id', sa.Uuid(), nullable=True),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('cancel_reason', sa.String(length=24), nullable=True),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("side IN ('buy', 'sell')", name=op.f('ck_trading_orders_side')),
    sa.CheckConstraint("state <> 'open' OR (side = 'sell') = (lock_id IS NOT NULL)", name=op.f('ck_trading_orders_sell_lock')),
    sa.CheckConstraint("state IN ('open', 'filled', 'cancelled')", name=op.f('ck_trading_orders_state')),
    sa.CheckConstraint('price_fen > 0', name=op.f('ck_trading_orders_price')),
    sa.CheckConstraint('quantity > 0 AND filled >= 0 AND filled <= quantity', name=op.f('ck_trading_orders_quantity')),
    sa.CheckConstraint('reserved_fen >= 0', name=op.f('ck_trading_orders_reserved')),
    sa.ForeignKeyConstraint(['account_id'], ['trading_accounts.id'], name=op.f('fk_trading_orders_account_id_trading_accounts')),
    sa.ForeignKeyConstraint(['product_key'], ['trading_products.key'], name=op.f('fk_trading_orders_product_key_trading_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_orders'))
    )
    op.create_index('ix_trading_orders_account', 'trading_orders', ['account_id', 'id'], unique=False)
    op.create_index('ix_trading_orders_book', 'trading_orders', ['product_key', 'side', 'price_fen', 'id'], unique=False, postgresql_where=sa.text("state = 'open'"))

    # The exchange's default rules (Art. 28): 09:30–11:30 and 13:00–15:00 Asia/Shanghai on
    # working days, a 10 % daily band around the previous close, a 0.5 % fee, deals open 24 h.
    op.execute(
        "INSERT INTO trading_config (id, sessions, band_bps, fee_bps, deal_ttl_s, updated_at, "
        "updated_by) VALUES (1, '[[\"09:30\", \"11:30\"], [\"13:00\", \"15:00\"]]', 1000, 50, "
        "86400, now(), 'migration')"
    )
    op.execute("CREATE SEQUENCE offsets_certificate_no_seq")


def downgrade() -> None:
    op.execute("DROP SEQUENCE IF EXISTS offsets_certificate_no_seq")
    op.drop_index('ix_trading_orders_book', table_name='trading_orders', postgresql_where=sa.text("state = 'open'"))
    op.drop_index('ix_trading_orders_account', table_name='trading_orders')
    op.drop_table('trading_orders')
    op.drop_index('uq_trading_fund_entries_bank_reference', table_name='trading_fund_entries', postgresql_where=sa.text('bank_reference IS NOT NULL'))
    op.drop_index('ix_trading_fund_entries_account', table_name='trading_fund_entries')
    op.drop_table('trading_fund_entries')
    op.drop_index('ix_trading_deals_seller', table_name='trading_deals')
    op.drop_index('ix_trading_deals_open', table_name='trading_deals', postgresql_where=sa.text("state = 'proposed'"))
    op.drop_index('ix_trading_deals_buyer', table_name='trading_deals')
    op.drop_table('trading_deals')
    op.drop_index('ix_trading_trades_product_date', table_name='trading_trades')
    op.drop_index('ix_trading_trades_date', table_name='trading_trades')
    op.drop_table('trading_trades')
    op.drop_table('trading_products')
    op.drop_table('trading_config')
    op.drop_table('trading_accounts')
    op.drop_index('ix_offsets_retirements_org', table_name='offsets_retirements')
    op.drop_index('ix_offsets_retirements_kind', table_name='offsets_retirements')
    op.drop_table('offsets_retirements')
    op.drop_table('offsets_emissions')
    op.drop_index('ix_offsets_compliance_pending', table_name='offsets_compliance', postgresql_where=sa.text("state = 'pending'"))
    op.drop_index('ix_offsets_compliance_entity', table_name='offsets_compliance')
    op.drop_table('offsets_compliance')
    op.drop_table('offsets_caps')
