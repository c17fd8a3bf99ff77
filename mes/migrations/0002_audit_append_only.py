from django.db import migrations

# The audit trail is append-only in the database itself, whoever connects. (TRUNCATE, which
# needs table ownership, stays possible for the test suite's flush and for the DBA.)
APPEND_ONLY = """
CREATE FUNCTION mes_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER mes_audit_append_only
    BEFORE UPDATE OR DELETE ON mes_auditentry
    FOR EACH ROW EXECUTE FUNCTION mes_audit_refuse_change();
"""

ALLOW_CHANGES = """
DROP TRIGGER mes_audit_append_only ON mes_auditentry;
DROP FUNCTION mes_audit_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("mes", "0001_initial")]

    operations = [migrations.RunSQL(APPEND_ONLY, ALLOW_CHANGES)]
