"""Decision's time indexes ascending on created_at (read backwards for the newest first).

New decisions then land at the end of each index's range, where PostgreSQL appends and fills pages,
instead of at the start of it. Each index is dropped and built again: on PostgreSQL a CREATE INDEX
holds off writes to the table while it builds (see docs/operations.md for the time it takes).
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('decisions', '0005_decision_float_arrays'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='decision',
            name='decision_symbol_time',
        ),
        migrations.RemoveIndex(
            model_name='decision',
            name='decision_time',
        ),
        migrations.RemoveIndex(
            model_name='decision',
            name='decision_model_time',
        ),
        migrations.RemoveIndex(
            model_name='decision',
            name='decision_action_time',
        ),
        migrations.AddIndex(
            model_name='decision',
            index=models.Index(fields=['symbol', 'created_at'], name='decision_symbol_time'),
        ),
        migrations.AddIndex(
            model_name='decision',
            index=models.Index(fields=['created_at'], name='decision_time'),
        ),
        migrations.AddIndex(
            model_name='decision',
            index=models.Index(fields=['model_version', 'created_at'], name='decision_model_time'),
        ),
        migrations.AddIndex(
            model_name='decision',
            index=models.Index(fields=['action', 'created_at'], name='decision_action_time'),
        ),
    ]
