-- The SECURITY DEFINER functions of the OEE files run with their owner's rights (the account
-- that migrates), so they must not resolve names through the caller's search_path: each is
-- pinned to the schema the MES tables are in -- the one this installation runs in -- and
-- pg_temp last, so no object a caller creates can stand in for a table or function.
DO $$
DECLARE
    definer regprocedure;
BEGIN
    FOR definer IN
        SELECT procedure.oid::regprocedure
        FROM pg_proc procedure
        WHERE procedure.pronamespace = 'reporting'::regnamespace AND procedure.prosecdef
    LOOP
        EXECUTE format(
            'ALTER FUNCTION %s SET search_path = %I, pg_temp', definer, current_schema()
        );
    END LOOP;
END
$$;
