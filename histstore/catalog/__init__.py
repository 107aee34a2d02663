"""The DuckDB catalog: models, migrations, connections, bulk I/O and user SQL.

No torch here: `histstore sql` and `status` import only this subpackage.
"""
