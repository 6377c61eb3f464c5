-- Two roles for one Member Center database: one that migrates and owns the
-- schema, one the services run as, which cannot change the audit tables
-- (docs/security.md, "Operators are accountable").
--
-- Run once, as a superuser, after creating the two login roles (with the
-- authentication your site uses) and the database:
--
--   psql -v db=membercenter -v owner=membercenter_owner -v app=membercenter_app -f deploy/postgres/roles.sql
--
-- then migrate as the owner (MC_PG_URL naming membercenter_owner:
-- `membercenter migrate`) and run serve and pipeline as the app role.
-- Run it again after a migration from a release before 00028, and after
-- moving an existing database to these roles (first, as a superuser:
-- REASSIGN OWNED BY <old role> TO <owner>).
\set ON_ERROR_STOP on
\connect :"db"

ALTER DATABASE :"db" OWNER TO :"owner";
ALTER SCHEMA public OWNER TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";

-- What the migrations create from now on, and what they created before.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO :"app";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO :"app";

-- The audit tables, once they exist: INSERT and SELECT only (and UPDATE on
-- identity_audit, whose identifiers an erasure blanks).
DO $$
BEGIN
    IF to_regprocedure('public.audit_tables_lockdown()') IS NOT NULL THEN
        PERFORM public.audit_tables_lockdown();
    END IF;
END $$;
