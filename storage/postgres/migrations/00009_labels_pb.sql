-- +goose Up
-- The current labels once more, as the encoded repeated LabelValue that
-- GetProfile returns (in id order, without per-label times): a profile read
-- decodes protobuf instead of building every label from JSON.
ALTER TABLE member_features ADD COLUMN labels_pb bytea;

-- +goose Down
ALTER TABLE member_features DROP COLUMN labels_pb;
