//! Actions in container images (issue 19): the worker pulls the image an
//! action's `container-image` names (here an OCI layout directory built
//! from busybox-static), the runner runs the action in it, and the
//! resolved digest is in the server logs; bad images are the action's
//! precise failure.

use corral_proto::reapi::{platform::Property, Platform};
use corral_testkit::images::{busybox_tree, oci_layout, IMAGE_ONLY};
use corral_worker::executor::IMAGE_LOG;
use tonic::Code;

use crate::{privileged, shell, Farm};

fn in_image(
    mut command: corral_proto::reapi::Command,
    image: &str,
) -> corral_proto::reapi::Command {
    command.environment_variables[0].value = "/bin".into();
    #[allow(deprecated)] // Command.platform: where Bazel 4 puts it.
    {
        command.platform = Some(Platform {
            properties: vec![Property {
                name: "container-image".into(),
                value: image.into(),
            }],
        });
    }
    command
}

/// The farm and an `oci:` value of a busybox image in it, or `None`.
async fn farm_with_image(test: &str) -> Option<(Farm, String, String)> {
    if !privileged(test) {
        return None;
    }
    let farm = Farm::start_with_images().await;
    let tree = farm.dir.path().join("tree");
    if busybox_tree(&tree).is_none() {
        corral_testkit::skip(test, "busybox-static is not installed");
        return None;
    }
    let layout = farm.dir.path().join("layout");
    let digest = oci_layout(&tree, &layout, "v1");
    let value = format!("oci:{}:v1", layout.display());
    Some((farm, value, digest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_runs_in_its_image_and_its_digest_is_recorded() {
    let Some((farm, image, digest)) =
        farm_with_image("an_action_runs_in_its_image_and_its_digest_is_recorded").await
    else {
        return;
    };
    let (root, _) = farm.input_root().await;
    let script = format!(
        "cat /{}; cat /etc/layer2; test -e /etc/removed-by-layer2 || echo whiteout honoured; \
         test -e /etc/debian_version || echo no host /etc; test -e /usr/bin/python3 || echo no host /usr",
        IMAGE_ONLY.0
    );
    for round in ["pulled: yes", "pulled: no, cached"] {
        let job = farm
            .job(in_image(shell(&script), &image), root.clone(), None)
            .await;
        let response = farm.execute(&job).await;
        assert_eq!(
            response.status.as_ref().map_or(0, |s| s.code),
            0,
            "{response:?}"
        );
        let result = response.result.unwrap();
        let stdout = String::from_utf8(farm.read(&result.stdout_digest).await).unwrap();
        assert_eq!(
            stdout,
            format!(
                "{}second layer\nwhiteout honoured\nno host /etc\nno host /usr\n",
                IMAGE_ONLY.1
            ),
        );
        let log = &response.server_logs[IMAGE_LOG];
        let log = String::from_utf8(farm.read(&log.digest).await).unwrap();
        assert!(log.contains(&format!("container-image: {image}")), "{log}");
        assert!(log.contains(&format!("digest: {digest}")), "{log}");
        assert!(log.contains(round), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_fail_the_action_naming_the_image_and_the_reason() {
    let Some((farm, image, _)) =
        farm_with_image("bad_images_fail_the_action_naming_the_image_and_the_reason").await
    else {
        return;
    };
    let (root, _) = farm.input_root().await;
    let unknown_tag = image.replace(":v1", ":v2");
    for (value, code, says) in [
        (unknown_tag.as_str(), Code::FailedPrecondition, "tag v2"),
        (
            "oci:/nonexistent/layout",
            Code::FailedPrecondition,
            "not found",
        ),
        (
            "docker://Bad/Name",
            Code::InvalidArgument,
            "invalid container-image",
        ),
        ("ubuntu", Code::InvalidArgument, "neither docker://"),
    ] {
        let job = farm
            .job(in_image(shell("true"), value), root.clone(), None)
            .await;
        let response = farm.execute(&job).await;
        let status = response.status.unwrap();
        assert_eq!(status.code, code as i32, "{value}: {}", status.message);
        assert!(
            status.message.contains(value) && status.message.contains(says),
            "{value}: {}",
            status.message
        );
    }
}
