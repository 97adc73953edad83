//! Packing messages into `google.protobuf.Any` and back.
//!
//! prost does not know the fully qualified name of a message, and the
//! types of `bazel-remote-apis` do not implement `prost::Name`, so the
//! messages we put in an `Any` name themselves here, once.

use prost::Message;

use crate::protobuf::Any;
use crate::resourceusage::{
    FilePoolResourceUsage, InputRootResourceUsage, MonetaryResourceUsage, PosixResourceUsage,
};

const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// A message that can travel inside a `google.protobuf.Any`.
pub trait Packable: Message + Default + Sized {
    /// The message's full protobuf name, e.g. `buildbarn.resourceusage.POSIXResourceUsage`.
    const FULL_NAME: &'static str;

    /// The `Any.type_url` for this message.
    fn type_url() -> String {
        format!("{TYPE_URL_PREFIX}{}", Self::FULL_NAME)
    }

    /// Encodes `self` as an `Any`.
    fn pack(&self) -> Any {
        Any {
            type_url: Self::type_url(),
            value: self.encode_to_vec(),
        }
    }

    /// Decodes `any` if it holds this message type; `None` if it holds another.
    fn unpack(any: &Any) -> Option<Result<Self, prost::DecodeError>> {
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        (name == Self::FULL_NAME).then(|| Self::decode(any.value.as_slice()))
    }
}

impl Packable for PosixResourceUsage {
    const FULL_NAME: &'static str = "buildbarn.resourceusage.POSIXResourceUsage";
}

impl Packable for FilePoolResourceUsage {
    const FULL_NAME: &'static str = "buildbarn.resourceusage.FilePoolResourceUsage";
}

impl Packable for MonetaryResourceUsage {
    const FULL_NAME: &'static str = "buildbarn.resourceusage.MonetaryResourceUsage";
}

impl Packable for InputRootResourceUsage {
    const FULL_NAME: &'static str = "buildbarn.resourceusage.InputRootResourceUsage";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protobuf::Duration;

    #[test]
    fn posix_usage_round_trips_through_any() {
        let usage = PosixResourceUsage {
            user_time: Some(Duration {
                seconds: 1,
                nanos: 5,
            }),
            termination_signal: "KILL".into(),
            ..Default::default()
        };
        let any = usage.pack();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage"
        );
        let back = PosixResourceUsage::unpack(&any)
            .expect("same type")
            .expect("decodes");
        assert_eq!(back, usage);
    }

    #[test]
    fn unpack_of_another_type_is_none() {
        let any = FilePoolResourceUsage::default().pack();
        assert!(PosixResourceUsage::unpack(&any).is_none());
    }
}
