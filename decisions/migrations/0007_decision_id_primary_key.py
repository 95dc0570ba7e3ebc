"""Decision's primary key is its decision_id (UUID version 7); the bigint ``id`` is gone.

Every decision already had a unique, time-ordered decision_id: the bigint key was a second unique
index (and a sequence) that each stored decision had to maintain, about a tenth of PostgreSQL's
time per decision in a batch. An experience now refers to its decision by that UUID.

The steps keep every experience paired with its decision both ways: the UUID of each experience's
decision is copied into a new column before the bigint reference is dropped; going back, the bigint
``id`` is added again (numbered by PostgreSQL's identity, or SQLite's rowid) and each experience's
reference is filled from the UUID before it becomes NOT NULL.
"""

import django.db.models.deletion
from django.db import migrations, models

import decisions.ids


def _set_constraints_immediate(schema_editor) -> None:
    # The experience's foreign key is DEFERRABLE INITIALLY DEFERRED: rows updated in this
    # transaction would leave trigger events pending, and PostgreSQL refuses to ALTER a table with
    # pending events. Checking them now (they pass) clears them.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        schema_editor.execute("SET CONSTRAINTS ALL DEFERRED")


def uuid_of_each_decision(apps, schema_editor):
    schema_editor.execute(
        "UPDATE decisions_experience SET decision_ref = "
        "(SELECT d.decision_id FROM decisions_decision d WHERE d.id = decisions_experience.decision_id)"
    )
    _set_constraints_immediate(schema_editor)


def id_of_each_decision(apps, schema_editor):
    schema_editor.execute(
        "UPDATE decisions_experience SET decision_id = "
        "(SELECT d.id FROM decisions_decision d WHERE d.decision_id = decisions_experience.decision_ref)"
    )
    _set_constraints_immediate(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ("decisions", "0006_decision_indexes_ascending"),
    ]

    operations = [
        migrations.AddField(
            model_name="experience",
            name="decision_ref",
            field=models.UUIDField(null=True),
        ),
        migrations.RunPython(uuid_of_each_decision, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="experience",
            name="decision",
            field=models.OneToOneField(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="experience", to="decisions.decision"
            ),
        ),
        migrations.RunPython(migrations.RunPython.noop, id_of_each_decision),
        migrations.RemoveField(
            model_name="experience",
            name="decision",
        ),
        migrations.AlterModelOptions(
            name="decision",
            options={"ordering": ["-created_at", "-decision_id"]},
        ),
        migrations.RemoveField(
            model_name="decision",
            name="id",
        ),
        migrations.AlterField(
            model_name="decision",
            name="decision_id",
            field=models.UUIDField(
                default=decisions.ids.uuid7, editable=False, help_text="UUID version 7 (time-ordered).",
                primary_key=True, serialize=False,
            ),
        ),
        migrations.AlterField(
            model_name="experience",
            name="decision_ref",
            field=models.OneToOneField(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="experience", to="decisions.decision"
            ),
        ),
        migrations.RenameField(
            model_name="experience",
            old_name="decision_ref",
            new_name="decision",
        ),
        migrations.AlterField(
            model_name="experience",
            name="decision",
            field=models.OneToOneField(
                on_delete=django.db.models.deletion.PROTECT, related_name="experience", to="decisions.decision"
            ),
        ),
    ]
