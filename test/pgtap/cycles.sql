-- cycles.sql: calendar periods in UTC, whatever the session's TimeZone.
BEGIN;
SELECT plan(16);
SET LOCAL TimeZone = 'Pacific/Auckland';

SELECT is(lava._period_start('daily', '2026-03-10 23:59:59.999999+00'), '2026-03-10 00:00:00+00', 'daily starts at 00:00 UTC');
SELECT is(lava._period_end('daily', '2026-03-10 23:59:59.999999+00'), '2026-03-11 00:00:00+00', 'daily ends at the next 00:00 UTC');
SELECT is(lava._period_start('daily', '2026-03-11 00:00:00+00'), '2026-03-11 00:00:00+00', 'the boundary belongs to the new day');
SELECT is(lava._period_start('daily', '2026-03-11 09:00:00+13'), '2026-03-10 00:00:00+00', 'a local time east of UTC still uses the UTC day');
SELECT is(lava._period_start('weekly', '2026-03-15 12:00:00+00'), '2026-03-09 00:00:00+00', 'weekly starts on Monday (Sunday the 15th -> Monday the 9th)');
SELECT is(lava._period_start('weekly', '2026-03-09 00:00:00+00'), '2026-03-09 00:00:00+00', 'Monday 00:00 UTC starts a week');
SELECT is(lava._period_end('weekly', '2026-03-15 23:59:59+00'), '2026-03-16 00:00:00+00', 'a week ends the next Monday');
SELECT is(lava._period_start('monthly', '2026-02-28 23:00:00+00'), '2026-02-01 00:00:00+00', 'monthly starts on the 1st');
SELECT is(lava._period_end('monthly', '2026-02-28 23:00:00+00'), '2026-03-01 00:00:00+00', 'February ends on March 1st');
SELECT is(lava._period_end('monthly', '2026-12-31 23:59:59+00'), '2027-01-01 00:00:00+00', 'December rolls into the next year');
SELECT is(lava._period_end('monthly', '2028-02-15 00:00:00+00'), '2028-03-01 00:00:00+00', 'leap February');
SELECT is(lava._period_start('total', now()), '-infinity'::timestamptz, 'total never resets');
SELECT is(lava._period_end('total', now()), NULL, 'total has no end');
SELECT is(lava._period_start(NULL, now()), '-infinity'::timestamptz, 'no limit counts the lifetime');

-- the document's reset times follow the cycle
SELECT is((lava.create_spend_key('{"name": "w", "spend_limit": {"amount": "1", "cycle": "weekly"}}') ->> 'spend_resets_at')::timestamptz,
	lava._period_end('weekly', now()), 'spend_resets_at is the end of the current week');
SELECT is(lava.create_spend_key('{"name": "t", "request_limit": {"count": 5, "cycle": "total"}}') ->> 'requests_reset_at',
	NULL, 'a total request limit never resets');

SELECT * FROM finish();
ROLLBACK;
