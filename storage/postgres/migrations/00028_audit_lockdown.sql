-- +goose Up
-- The audit tables are the record of authority for who did what. Their
-- triggers refuse UPDATE and DELETE; config_audit's refuses TRUNCATE too,
-- the owner's included. identity_audit and operator_audit are distributed
-- by member on Citus, which refuses statement-level triggers: only their
-- owner can truncate them, and the services do not run as it
-- (deploy/postgres/roles.sql).
-- audit_tables_lockdown() takes every privilege to change them from every
-- role but their owner (the role that migrates): the services' role keeps
-- INSERT and SELECT, and UPDATE on identity_audit, whose identifiers an
-- erasure blanks (its trigger allows nothing else). deploy/postgres/roles.sql
-- runs it again after granting the services' role its privileges.
-- +goose StatementBegin
CREATE FUNCTION audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
-- +goose StatementEnd
CREATE TRIGGER config_audit_no_truncate BEFORE TRUNCATE ON config_audit FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();

-- +goose StatementBegin
CREATE FUNCTION audit_tables_lockdown() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT DISTINCT c.relname, a.grantee::regrole::text AS grantee, a.privilege_type
          FROM pg_class c
          CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE c.relnamespace = 'public'::regnamespace
           AND c.relname IN ('identity_audit', 'operator_audit', 'config_audit')
           AND a.grantee <> c.relowner AND a.grantee <> 0
           AND (a.privilege_type IN ('DELETE', 'TRUNCATE')
                OR (a.privilege_type = 'UPDATE' AND c.relname <> 'identity_audit'))
    LOOP
        EXECUTE format('REVOKE %s ON %I FROM %s', g.privilege_type, g.relname, g.grantee);
    END LOOP;
END $$;
-- +goose StatementEnd
SELECT audit_tables_lockdown();

-- +goose Down
DROP FUNCTION audit_tables_lockdown;
DROP TRIGGER config_audit_no_truncate ON config_audit;
DROP FUNCTION audit_no_truncate;
