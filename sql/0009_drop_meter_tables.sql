-- The tables 0008 copied into usage_samples and usage_rollup_hour; nothing writes or reads them.
DROP TABLE IF EXISTS meter_samples;
DROP TABLE IF EXISTS meter_rollup_hour;
