//! The bench map for Fluvio's SmartModule engine: the record value in ASCII
//! uppercase, key kept.
use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, smartmodule};

#[smartmodule(map)]
pub fn map(record: &SmartModuleRecord) -> Result<(Option<RecordData>, RecordData)> {
    let key = record.key.clone();
    Ok((key, record.value.as_ref().to_ascii_uppercase().into()))
}
