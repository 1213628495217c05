"""Runs statements and checks from a JSON plan on current ClickHouse, in-process (chDB).

Plan: {"statements": [sql, ...], "checks": [{"sql": sql, "expect": tsv-or-null}, ...]}.
Prints one line per check and a closing "N passed, N failed"; exits 1 on any failure.
"""
import json
import sys
import tempfile

from chdb import session


def main(path):
    plan = json.load(open(path))
    failed = passed = 0
    with tempfile.TemporaryDirectory() as data:
        s = session.Session(data)
        print("clickhouse", str(s.query("SELECT version()")).strip())
        s.query("CREATE DATABASE IF NOT EXISTS mh")
        s.query("USE mh")
        for sql in plan["statements"]:
            try:
                s.query(sql)
                passed += 1
            except Exception as e:  # report every failure, not just the first
                failed += 1
                print(f"FAILED statement: {sql}\n  {e}")
        for check in plan["checks"]:
            try:
                got = str(s.query(check["sql"], "TSV")).strip()
                if check.get("expect") is not None and got != check["expect"]:
                    raise AssertionError(f"expected {check['expect']!r}, got {got!r}")
                passed += 1
                print(f"ok: {check['sql'][:90]}")
            except Exception as e:
                failed += 1
                print(f"FAILED check: {check['sql']}\n  {e}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
