from django.db import migrations

# Wakes the outbox relay (LISTEN aegis_outbox) when rows commit: notifications are delivered
# at commit, so the relay never looks for rows that are not visible yet.
NOTIFY = """
CREATE OR REPLACE FUNCTION mes_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('aegis_outbox', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER mes_outbox_notify AFTER INSERT ON mes_outboxmessage
    FOR EACH STATEMENT EXECUTE FUNCTION mes_outbox_notify();
"""
DROP = """
DROP TRIGGER IF EXISTS mes_outbox_notify ON mes_outboxmessage;
DROP FUNCTION IF EXISTS mes_outbox_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("mes", "0004_audit_actor_outlives_account")]
    operations = [migrations.RunSQL(NOTIFY, reverse_sql=DROP)]
