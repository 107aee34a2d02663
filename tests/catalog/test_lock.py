"""One writer at a time; everything else waits its turn: a command that finds the catalog busy
says once who holds it (PID and command), waits up to --wait seconds, then fails with one line.
Readers share the store; commands release the catalog when done."""
import subprocess
import sys
import textwrap

# holds the catalog read-write (exclusive mode) until a line arrives on stdin (or it closes)
HOLD = textwrap.dedent("""
    import sys
    from histstore.store import Store
    store = Store.open(sys.argv[2], exclusive=True)
    with store.session():
        print("locked", flush=True)
        sys.stdin.readline()
""")


def _histstore(store, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "histstore", "--store", str(store.root), *args],
                          capture_output=True, text=True, timeout=timeout)


def _hold(store):
    script = store.root.parent / "hold.py"
    script.write_text(HOLD)
    holder = subprocess.Popen([sys.executable, str(script), "hold-marker", str(store.root)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_busy_catalog_times_out_with_one_line_naming_the_holder(store):
    holder = _hold(store)
    try:
        for args in (["sql", "--write", "SELECT 1"], ["sql", "SELECT 1"], ["status"]):
            r = _histstore(store, "--wait", "0.3", *args)
            assert r.returncode != 0
            msg = r.stderr.strip()
            assert len(msg.splitlines()) == 1, msg
            assert "locked by another process" in msg and f"PID {holder.pid}" in msg
            assert "hold-marker" in msg  # the holder's command line, from /proc
            assert str(store.root) in msg and "Traceback" not in msg
    finally:
        holder.kill()
        holder.wait()


def test_waiting_command_gets_through_when_the_holder_is_done(store):
    holder = _hold(store)
    reader = subprocess.Popen([sys.executable, "-m", "histstore", "--store", str(store.root), "sql",
                               "SELECT 42 AS answer", "--format", "csv"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        waiting = reader.stderr.readline()  # the reader says who it waits for ...
        assert "waiting" in waiting and f"PID {holder.pid}" in waiting and "hold-marker" in waiting
    finally:
        holder.stdin.close()  # ... then the holder finishes
        holder.wait()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert out.splitlines()[-1] == "42"
    assert "waiting" not in err  # said once


def test_concurrent_readers_and_lock_release(store):
    readers = [subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time; from histstore.store import Store\n"
         "with Store.open(sys.argv[1]).read() as c:\n"
         "    print(c.exec_driver_sql('SELECT count(*) FROM slides').scalar(), flush=True); time.sleep(2)",
         str(store.root)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in readers:
            assert p.stdout.readline().strip() == "0"
        r = _histstore(store, "sql", "SELECT count(*) AS n FROM cases", "--format", "csv")
        assert r.returncode == 0, r.stderr
    finally:
        for p in readers:
            p.wait()
    # a finished command leaves no lock behind: a writer can open at once
    r = _histstore(store, "sql", "--write", "INSERT INTO cases (case_id) VALUES ('x')")
    assert r.returncode == 0, r.stderr
    with store.write() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM cases").scalar() == 1


def test_threads_of_one_process_take_turns(store):
    """A heartbeat thread writing while the main thread reads must not trip DuckDB's 'one
    configuration per file per process' rule."""
    import threading

    errors = []

    def writer():
        try:
            for i in range(10):
                with store.write() as conn:
                    conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES (?)", (f"t{i}",))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    for _ in range(10):
        with store.read() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM cases").scalar()
    t.join()
    assert not errors
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM cases").scalar() == 10
