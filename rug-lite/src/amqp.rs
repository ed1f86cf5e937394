//! Event intake: rug-lite's own queue bound to Neutron's notification exchange, every body
//! handed to `serve` over a channel. Declared as oslo.messaging declares it (a non-durable topic
//! exchange), so declaring first or second makes no difference to Neutron.
//!
//! The queue is non-durable and deleted when rug-lite's consumer goes: nothing is owed across a
//! restart, because events are only hints and the resync catches up. On any connection or
//! channel failure (a broker restart) it reconnects with backoff and declares everything again.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;

use crate::settings::AmqpSettings;

#[derive(Debug, thiserror::Error)]
enum IntakeError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the broker ended the consumer")]
    ConsumerEnded,
}

/// Consumes until `shutdown` resolves or the receiving side is gone.
pub(crate) async fn run(
    settings: AmqpSettings,
    bodies: mpsc::Sender<Vec<u8>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut retry = Duration::from_secs(1);
    loop {
        let session = consume(&settings, &bodies, &mut retry);
        tokio::select! {
            ended = session => match ended {
                Ok(()) => return, // the receiver is gone: serve is stopping
                Err(e) => tracing::warn!(error = %e, retry_in = ?retry, "AMQP intake lost; reconnecting"),
            },
            () = &mut shutdown => return,
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = &mut shutdown => return,
        }
        retry = (retry * 2).min(Duration::from_secs(30));
    }
}

/// One connection's life. `Ok` only when the receiver is gone.
async fn consume(
    s: &AmqpSettings,
    bodies: &mpsc::Sender<Vec<u8>>,
    retry: &mut Duration,
) -> Result<(), IntakeError> {
    let props = ConnectionProperties::default().with_connection_name("rug-lite".into());
    let conn = Connection::connect(&s.url, props).await?;
    let channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            s.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: false,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            s.queue.as_str().into(),
            QueueDeclareOptions {
                durable: false,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            s.queue.as_str().into(),
            s.exchange.as_str().into(),
            s.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            s.queue.as_str().into(),
            "rug-lite".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(exchange = %s.exchange, routing_key = %s.routing_key, queue = %s.queue, "consuming notifications");
    *retry = Duration::from_secs(1);
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        if bodies.send(delivery.data.clone()).await.is_err() {
            let _ = conn.close(200, "rug-lite stopping".into()).await;
            return Ok(());
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Err(IntakeError::ConsumerEnded)
}

#[cfg(test)]
mod tests {
    //! Against a real RabbitMQ (the rig's: `RUG_LITE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F`);
    //! without that variable the test says so and checks nothing, unless
    //! `RUG_LITE_RIG_REQUIRED=1` (set by `scripts/rig-test`): then it fails.

    use super::*;
    use lapin::options::BasicPublishOptions;
    use lapin::BasicProperties;

    async fn publish(url: &str, exchange: &str, routing_key: &str, body: &[u8]) {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        conn.close(200, "done".into()).await.unwrap();
    }

    /// Publishes `want` until it comes through. The rig's Neutron publishes on the same
    /// exchange and key, so other bodies are skipped (but never the notifications.error one).
    async fn wait_for(url: &str, want: &[u8], rx: &mut mpsc::Receiver<Vec<u8>>) {
        loop {
            publish(url, "neutron", "notifications.info", want).await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Ok(Some(b)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                assert_ne!(b, ERROR_BODY, "a notifications.error body arrived");
                if b == want {
                    return;
                }
            }
        }
    }

    const ERROR_BODY: &[u8] = b"{\"rug-lite test\": \"notifications.error\"}";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumes_from_the_neutron_exchange_and_survives_a_connection_loss() {
        let Ok(url) = std::env::var("RUG_LITE_TEST_AMQP_URL") else {
            assert!(
                std::env::var_os("RUG_LITE_RIG_REQUIRED").is_none(),
                "RUG_LITE_RIG_REQUIRED is set but RUG_LITE_TEST_AMQP_URL is not"
            );
            eprintln!("skipped: RUG_LITE_TEST_AMQP_URL is not set (a RabbitMQ such as the bringup.sh rig's)");
            return;
        };
        let settings = AmqpSettings {
            url: url.clone(),
            exchange: "neutron".into(),
            routing_key: "notifications.info".into(),
            queue: format!("rug-lite-test-{}", std::process::id()),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let intake = tokio::spawn(run(settings.clone(), tx, async {
            let _ = stop_rx.await;
        }));
        let sample = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/neutron-notifications/router.create.end.json"),
        )
        .unwrap();

        // Until the queue exists and a body comes through.
        tokio::time::timeout(Duration::from_secs(20), wait_for(&url, &sample, &mut rx))
            .await
            .expect("first body");
        // Other routing keys are not ours.
        publish(&url, "neutron", "notifications.error", ERROR_BODY).await;

        // The broker drops every connection (as on a restart): intake reconnects, declares its
        // queue again and receives again.
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_all_connections", "rug-lite test"])
            .status()
            .expect("rabbitmqctl");
        assert!(status.success());
        let again = b"{\"again\": true}".to_vec();
        tokio::time::timeout(Duration::from_secs(30), wait_for(&url, &again, &mut rx))
            .await
            .expect("reconnected");
        stop_tx.send(()).unwrap();
        intake.await.unwrap();
    }
}
