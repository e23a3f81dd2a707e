-- labshare: first-start initialisation of the PostgreSQL database (run by the
-- postgres image from /docker-entrypoint-initdb.d, once, on an empty data volume,
-- connected as POSTGRES_USER to POSTGRES_DB).
--
-- One database for all services; each service logs in as its own role and keeps
-- its tables in a schema named after itself, which its migrations create (the role
-- may create schemas in this database and owns what it creates). No role can read
-- another service's schema.
--
-- Passwords come from the container's environment (psql's \getenv):
--   LABSHARE_INVENTORY_DB_PASSWORD, LABSHARE_BOOKING_DB_PASSWORD, LABSHARE_NOTIFY_DB_PASSWORD
-- Safe to run again: existing roles get their password reset, nothing is dropped.

\set ON_ERROR_STOP on

\getenv inventory_password LABSHARE_INVENTORY_DB_PASSWORD
\getenv booking_password LABSHARE_BOOKING_DB_PASSWORD
\getenv notify_password LABSHARE_NOTIFY_DB_PASSWORD

\if :{?inventory_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'LABSHARE_INVENTORY_DB_PASSWORD is not set'; END $$;
\endif
\if :{?booking_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'LABSHARE_BOOKING_DB_PASSWORD is not set'; END $$;
\endif
\if :{?notify_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'LABSHARE_NOTIFY_DB_PASSWORD is not set'; END $$;
\endif

-- Exclusion constraints over (resource, time range) need btree_gist; create it
-- once here so no service role needs the privilege.
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public;

-- Nobody but the owner may use this database unless granted below.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec

-- One login role per service.
SELECT format('CREATE ROLE %I LOGIN', r)
  FROM unnest(ARRAY['labshare_inventory', 'labshare_booking', 'labshare_notify']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec

SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', r, pw)
  FROM (VALUES ('labshare_inventory', :'inventory_password'),
               ('labshare_booking', :'booking_password'),
               ('labshare_notify', :'notify_password')) AS v (r, pw) \gexec

-- Each may connect and create its own schema (its migrations do).
SELECT format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO %I', current_database(), r)
  FROM unnest(ARRAY['labshare_inventory', 'labshare_booking', 'labshare_notify']) AS r \gexec

-- Each role looks in its own schema first (the services also set search_path).
SELECT format('ALTER ROLE %I SET search_path = %I, public', 'labshare_' || s, s)
  FROM unnest(ARRAY['inventory', 'booking', 'notify']) AS s \gexec
