//! The encoders extension.

use cel::common::types::{CelString, STRING_TYPE};
use cel::common::value::CowVal;
use cel::{Env, ExecutionError};

/// `base64.encode(bytes)` and `base64.decode(string)` (padding optional when decoding), as
/// in cel-go's encoders extension: the `cel` crate's own is behind a feature this
/// workspace leaves off.
pub(super) fn encoders(env: &mut Env) -> Result<(), cel::DeclarationError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine;
    use cel::common::types::{CelBytes, BYTES_TYPE};
    fn encode<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
        let bytes = args
            .first()
            .and_then(|a| a.downcast_ref::<CelBytes>())
            .ok_or_else(|| ExecutionError::function_error("base64.encode", "expected bytes"))?;
        Ok(CowVal::owned(CelString::from(
            STANDARD.encode(bytes.inner()),
        )))
    }
    fn decode<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
        let text = args
            .first()
            .and_then(|a| a.downcast_ref::<CelString>())
            .ok_or_else(|| ExecutionError::function_error("base64.decode", "expected a string"))?;
        let text = text.inner().trim_end_matches('=');
        let bytes = STANDARD_NO_PAD
            .decode(text)
            .map_err(|e| ExecutionError::function_error("base64.decode", e))?;
        Ok(CowVal::owned(CelBytes::from(bytes)))
    }
    env.add_overload(
        "base64.encode",
        "base64_encode_bytes",
        vec![BYTES_TYPE],
        encode,
    )?;
    env.add_overload(
        "base64.decode",
        "base64_decode_string",
        vec![STRING_TYPE],
        decode,
    )?;
    Ok(())
}
