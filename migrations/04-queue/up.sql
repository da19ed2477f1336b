-- Reserved: filled by the branch that owns this migration.
SELECT 1;
