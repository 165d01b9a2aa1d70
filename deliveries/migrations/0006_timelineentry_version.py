"""Timeline entries record the delivery's version after each change, for the shift replay.

Older entries get the version they must have produced: a delivery starts at version 1 with its
"created" entry and every later entry is one command that bumped it by one. Shop edits used to
bump today's deliveries without an entry, so for those few the backfilled number can be low; new
entries record the real one (and shop edits now write a `shop_changed` entry).
"""

from django.db import migrations, models

BACKFILL = """
UPDATE deliveries_timelineentry AS t SET version = numbered.n
FROM (
    SELECT id, row_number() OVER (PARTITION BY delivery_id ORDER BY at, id) AS n
    FROM deliveries_timelineentry
) AS numbered
WHERE t.id = numbered.id AND t.version IS NULL
"""


class Migration(migrations.Migration):
    dependencies = [
        ("deliveries", "0005_shop_version"),
    ]

    operations = [
        migrations.AddField(
            model_name="timelineentry",
            name="version",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="timelineentry",
            index=models.Index(fields=["at"], name="timeline_at"),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
    ]
