PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    workflow_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    tenant TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);
INSERT INTO instances VALUES('golden-done','golden',1,'Completed',NULL,1796698359338,1796698364507,6,'{"id":"golden-done","status":"Completed","workflow":{"name":"golden","version":1,"steps":[{"id":"first","agent":"echo","input":{"value":1}},{"id":"approve","needs":["first"],"wait_for_event":{"name":"approval"}},{"id":"pause","needs":["first"],"timer":{"delay_ms":5000}},{"id":"last","needs":["approve","pause"],"agent":"echo","input":{"value":"${{ steps.first.output.value + steps.approve.output.add }}"}}],"output":"${{ steps.last.output.value }}"},"definition_hash":"0947b0928474430c245ad23f6f965bfbb345d6c993d7f9b5294a1685d1dffece","input":{},"output":3,"created_at":"2026-12-08T02:52:39.338424444Z","updated_at":"2026-12-08T02:52:44.50703597Z","run":7617214645213864,"execution":0,"sequence":5,"position":10,"run_position":0,"steps":{"approve":{"status":"Completed","output":{"add":2},"started_at":"2026-12-08T02:52:39.345397554Z","completed_at":"2026-12-08T02:52:39.352823164Z","completed_nth":2},"first":{"status":"Completed","output":{"attempt":1,"value":1},"tasks":[{"agent":"echo","input":{"value":1},"status":"Completed","attempt":1,"output":{"attempt":1,"value":1}}],"started_at":"2026-12-08T02:52:39.340149506Z","completed_at":"2026-12-08T02:52:39.345397554Z","completed_nth":1},"last":{"status":"Completed","output":{"attempt":1,"value":3},"tasks":[{"agent":"echo","input":{"value":3},"status":"Completed","attempt":1,"output":{"attempt":1,"value":3}}],"started_at":"2026-12-08T02:52:44.501678902Z","completed_at":"2026-12-08T02:52:44.50703597Z","completed_nth":4},"pause":{"status":"Completed","output":null,"started_at":"2026-12-08T02:52:39.345397554Z","completed_at":"2026-12-08T02:52:44.501678902Z","completed_nth":3}},"completions":4,"timers":[],"pending_events":[],"backlog":[]}');
INSERT INTO instances VALUES('golden-waiting','golden',1,'Running',NULL,1796698364617,1796698364622,3,'{"id":"golden-waiting","status":"Running","workflow":{"name":"golden","version":1,"steps":[{"id":"first","agent":"echo","input":{"value":1}},{"id":"approve","needs":["first"],"wait_for_event":{"name":"approval"}},{"id":"pause","needs":["first"],"timer":{"delay_ms":5000}},{"id":"last","needs":["approve","pause"],"agent":"echo","input":{"value":"${{ steps.first.output.value + steps.approve.output.add }}"}}],"output":"${{ steps.last.output.value }}"},"definition_hash":"0947b0928474430c245ad23f6f965bfbb345d6c993d7f9b5294a1685d1dffece","input":{},"created_at":"2026-12-08T02:52:44.617497126Z","updated_at":"2026-12-08T02:52:44.622356764Z","run":154028573725769,"execution":0,"sequence":2,"position":4,"run_position":0,"steps":{"approve":{"status":"Waiting","started_at":"2026-12-08T02:52:44.622356764Z"},"first":{"status":"Completed","output":{"attempt":1,"value":1},"tasks":[{"agent":"echo","input":{"value":1},"status":"Completed","attempt":1,"output":{"attempt":1,"value":1}}],"started_at":"2026-12-08T02:52:44.618849115Z","completed_at":"2026-12-08T02:52:44.622356764Z","completed_nth":1},"last":{"status":"Pending"},"pause":{"status":"Running","started_at":"2026-12-08T02:52:44.622356764Z"}},"completions":1,"timers":[{"kind":"delay","execution":0,"step":"pause"}],"pending_events":[],"backlog":[]}');
CREATE TABLE instance_parts (
    instance_id TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (instance_id, name)
) WITHOUT ROWID;
CREATE TABLE history (
    instance_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    PRIMARY KEY (instance_id, seq)
);
INSERT INTO history VALUES('golden-done',1,1796698359340,'{"type":"started","at":"2026-12-08T02:52:39.340149506Z","instance":"golden-done","workflow":{"name":"golden","version":1,"steps":[{"id":"first","agent":"echo","input":{"value":1}},{"id":"approve","needs":["first"],"wait_for_event":{"name":"approval"}},{"id":"pause","needs":["first"],"timer":{"delay_ms":5000}},{"id":"last","needs":["approve","pause"],"agent":"echo","input":{"value":"${{ steps.first.output.value + steps.approve.output.add }}"}}],"output":"${{ steps.last.output.value }}"},"input":{},"run":7617214645213864,"created_at":"2026-12-08T02:52:39.338424444Z"}',2,'[{"position":1,"seq":1,"kind":"instance_started","status":"Running","data":{"version":1,"workflow":"golden"}},{"position":2,"seq":1,"kind":"step_started","status":"Running","step":"first","attempt":1,"data":{"agent":"echo"}}]');
INSERT INTO history VALUES('golden-done',2,1796698359345,'{"type":"task_completed","at":"2026-12-08T02:52:39.345397554Z","key":{"run":7617214645213864,"execution":0,"step":"first"},"attempt":1,"output":{"attempt":1,"value":1}}',4,'[{"position":3,"seq":2,"kind":"step_completed","status":"Running","step":"first","data":{"attempt":1,"value":1}},{"position":4,"seq":2,"kind":"waiting_for_event","status":"Running","step":"approve","data":{"event":"approval","timeout_ms":null}}]');
INSERT INTO history VALUES('golden-done',3,1796698359352,'{"type":"event_raised","at":"2026-12-08T02:52:39.352823164Z","id":"ae014e3d-fe43-4133-ad39-2d20b0858315","name":"approval","data":{"add":2}}',6,'[{"position":5,"seq":3,"kind":"event_received","status":"Running","step":"approve","data":{"event":"approval"}},{"position":6,"seq":3,"kind":"step_completed","status":"Running","step":"approve","data":{"add":2}}]');
INSERT INTO history VALUES('golden-done',4,1796698364501,'{"type":"timer_fired","at":"2026-12-08T02:52:44.501678902Z","timer":{"kind":"delay","execution":0,"step":"pause"}}',8,'[{"position":7,"seq":4,"kind":"step_completed","status":"Running","step":"pause","data":null},{"position":8,"seq":4,"kind":"step_started","status":"Running","step":"last","attempt":1,"data":{"agent":"echo"}}]');
INSERT INTO history VALUES('golden-done',5,1796698364507,'{"type":"task_completed","at":"2026-12-08T02:52:44.50703597Z","key":{"run":7617214645213864,"execution":0,"step":"last"},"attempt":1,"output":{"attempt":1,"value":3}}',10,'[{"position":9,"seq":5,"kind":"step_completed","status":"Running","step":"last","data":{"attempt":1,"value":3}},{"position":10,"seq":5,"kind":"instance_completed","status":"Completed","data":3}]');
INSERT INTO history VALUES('golden-waiting',1,1796698364618,'{"type":"started","at":"2026-12-08T02:52:44.618849115Z","instance":"golden-waiting","workflow":{"name":"golden","version":1,"steps":[{"id":"first","agent":"echo","input":{"value":1}},{"id":"approve","needs":["first"],"wait_for_event":{"name":"approval"}},{"id":"pause","needs":["first"],"timer":{"delay_ms":5000}},{"id":"last","needs":["approve","pause"],"agent":"echo","input":{"value":"${{ steps.first.output.value + steps.approve.output.add }}"}}],"output":"${{ steps.last.output.value }}"},"input":{},"run":154028573725769,"created_at":"2026-12-08T02:52:44.617497126Z"}',2,'[{"position":1,"seq":1,"kind":"instance_started","status":"Running","data":{"version":1,"workflow":"golden"}},{"position":2,"seq":1,"kind":"step_started","status":"Running","step":"first","attempt":1,"data":{"agent":"echo"}}]');
INSERT INTO history VALUES('golden-waiting',2,1796698364622,'{"type":"task_completed","at":"2026-12-08T02:52:44.622356764Z","key":{"run":154028573725769,"execution":0,"step":"first"},"attempt":1,"output":{"attempt":1,"value":1}}',4,'[{"position":3,"seq":2,"kind":"step_completed","status":"Running","step":"first","data":{"attempt":1,"value":1}},{"position":4,"seq":2,"kind":"waiting_for_event","status":"Running","step":"approve","data":{"event":"approval","timeout_ms":null}}]');
CREATE TABLE outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (instance_id, id)
);
CREATE TABLE timers (
    instance_id TEXT NOT NULL,
    id TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (instance_id, id)
);
INSERT INTO timers VALUES('golden-waiting','delay:e0/pause',1796698369622,'{"execution":0,"kind":"delay","step":"pause"}');
CREATE TABLE claims (
    instance_id TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (instance_id, id)
) WITHOUT ROWID;
INSERT INTO claims VALUES('golden-done','ae014e3d-fe43-4133-ad39-2d20b0858315');
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
INSERT INTO leases VALUES('schedules','2004283c1e314be58710252e0ae97af5',1796698372590);
CREATE TABLE reports (
    subject TEXT NOT NULL,
    replica TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (subject, replica)
);
INSERT INTO reports VALUES('echo','legato-4c1542f165dd','{"completed":1,"durations":{"87":1},"failed":0,"running":0}',1796698364256,1796698384256);
CREATE TABLE dead_letters (
    id TEXT PRIMARY KEY,
    sort_key TEXT NOT NULL,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    message_id TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    instance_id TEXT,
    type TEXT,
    tenant TEXT,
    body BLOB NOT NULL,
    parked_at INTEGER NOT NULL
);
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    tenant TEXT,
    next_due INTEGER,
    body TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    tenant TEXT,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL
);
INSERT INTO agents VALUES('echo',NULL,'{"description":"Returns its input; diagnostics (sleep, fail, hang on demand)","kind":"builtin","leaseMs":60000}',1796698359247,1);
INSERT INTO agents VALUES('planner',NULL,'{"description":"Breaks a request into tasks for the other agents (chat model or offline)","kind":"builtin","leaseMs":60000}',1796698359249,1);
INSERT INTO agents VALUES('coder',NULL,'{"description":"Proposes, finalizes and reverts code changes (chat model or offline)","kind":"builtin","leaseMs":60000}',1796698359249,1);
INSERT INTO agents VALUES('data',NULL,'{"description":"Answers questions with SQL over the configured database","kind":"builtin","leaseMs":60000}',1796698359249,1);
INSERT INTO agents VALUES('approval',NULL,'{"description":"Asks a person for a decision and reads their verdict","kind":"builtin","leaseMs":60000}',1796698359250,1);
CREATE TABLE journal (
    instance_id TEXT NOT NULL,
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (instance_id, task, name)
) WITHOUT ROWID;
CREATE TABLE definitions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
INSERT INTO definitions VALUES('golden',1,'0947b0928474430c245ad23f6f965bfbb345d6c993d7f9b5294a1685d1dffece','{"name":"golden","output":"${{ steps.last.output.value }}","steps":[{"agent":"echo","id":"first","input":{"value":1}},{"id":"approve","needs":["first"],"wait_for_event":{"name":"approval"}},{"id":"pause","needs":["first"],"timer":{"delay_ms":5000}},{"agent":"echo","id":"last","input":{"value":"${{ steps.first.output.value + steps.approve.output.add }}"},"needs":["approve","pause"]}],"version":1}',1796698359328);
CREATE TABLE entities (
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    lock TEXT,
    operations INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tenant, type, id)
) WITHOUT ROWID;
INSERT INTO entities VALUES('','counter','golden','6',NULL,2,1796698359369,2);
CREATE TABLE entity_operations (
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    operation_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    operation TEXT NOT NULL,
    answer TEXT NOT NULL,
    sender TEXT,
    PRIMARY KEY (tenant, type, id, seq)
) WITHOUT ROWID;
INSERT INTO entity_operations VALUES('','counter','golden',1,'api/dfae5653-6166-4115-b320-fa67289184e6',1796698359361,'{"by":3,"op":"increment"}','{"ok":3}','api');
INSERT INTO entity_operations VALUES('','counter','golden',2,'api/d846386d-cfbe-421b-a6fc-ffcdd92dc95a',1796698359369,'{"by":3,"op":"increment"}','{"ok":6}','api');
CREATE TABLE entity_claims (
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (tenant, type, id, operation_id)
) WITHOUT ROWID;
INSERT INTO entity_claims VALUES('','counter','golden','api/d846386d-cfbe-421b-a6fc-ffcdd92dc95a',2,'{"ok":6}');
INSERT INTO entity_claims VALUES('','counter','golden','api/dfae5653-6166-4115-b320-fa67289184e6',1,'{"ok":3}');
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('outbox',12);
CREATE INDEX instances_by_created ON instances (created_at DESC, id DESC);
CREATE INDEX timers_by_due ON timers (due_at);
CREATE INDEX dead_letters_by_time ON dead_letters (sort_key);
CREATE INDEX schedules_by_due ON schedules (next_due) WHERE next_due IS NOT NULL;
COMMIT;
