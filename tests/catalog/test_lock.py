"""One writer per store: a second process gets a one-line message naming the holder;
readers share the store when no writer holds it; commands release the lock when done."""
import os
import subprocess
import sys
import textwrap
import time

HOLD_WRITE = textwrap.dedent("""
    import sys, time
    from histstore.store import Store
    with Store.open(sys.argv[1]).writer() as conn:
        print("locked", flush=True)
        time.sleep(30)
""")


def _histstore(store, *args):
    return subprocess.run([sys.executable, "-m", "histstore", "--store", str(store.root), *args],
                          capture_output=True, text=True, timeout=60)


def test_second_writer_gets_one_line_message(store):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE, str(store.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["sql", "--write", "SELECT 1"], ["sql", "SELECT 1"], ["status"]):
            r = _histstore(store, *args)
            assert r.returncode != 0
            msg = r.stderr.strip()
            assert len(msg.splitlines()) == 1, msg
            assert "locked by another process" in msg and f"PID {holder.pid}" in msg
            assert str(store.root) in msg and "Traceback" not in msg
    finally:
        holder.kill()
        holder.wait()


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
