"""The working-day calendar (工作日历): statutory working days as data, per year.

Seeded from the ``chinese-calendar`` package; the operator imports each new year once the
State Council publishes its holiday arrangement (国务院办公厅关于节假日安排的通知).
"""
