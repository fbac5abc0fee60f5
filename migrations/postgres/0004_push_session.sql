-- Security PUSH (3.x) sessions: the SessionID handed to a registered terminal (in its configuration, `SessionID=`),
-- kept so that the token it sends back (`Cookie: token=<md5(RegistryCode + serial + SessionID)>`) can be checked
-- across server restarts. NULL until one is issued; cleared when the terminal registers again, so each registration
-- gets a new one.

ALTER TABLE essl_push_terminals ADD COLUMN session_id text;
