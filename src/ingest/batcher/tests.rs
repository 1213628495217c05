use super::*;

fn submission(events: usize, arrived: tokio::time::Instant) -> Submission {
    let permits = Arc::new(Semaphore::new(1));
    Submission {
        rows: vec![EventRow::default(); events],
        keys: vec![],
        reply: oneshot::channel().0,
        arrived,
        _permit: Some(permits.try_acquire_owned().unwrap()),
    }
}

fn settings(max_events: usize) -> Settings {
    Settings {
        max_events,
        max_wait: Duration::from_millis(50),
        queue_max_events: 1_000,
        ack_timeout: Duration::from_secs(1),
    }
}

/// Sends a submission of 4 events 30 ms from now and one of 5 events 70 ms from now.
fn send_later(tx: mpsc::Sender<Submission>) -> tokio::task::JoinHandle<mpsc::Sender<Submission>> {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        tx.send(submission(4, tokio::time::Instant::now()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        tx.send(submission(5, tokio::time::Instant::now()))
            .await
            .unwrap();
        tx
    })
}

/// What queued during a long insert still waits for the clients that insert answered:
/// an eighth of its time (1 s), at most `max_wait` (50 ms), and no longer.
#[tokio::test(start_paused = true)]
async fn a_batch_gathers_after_a_long_insert_ended() {
    let (tx, mut rx) = mpsc::channel(8);
    let queued_long_ago = tokio::time::Instant::now();
    tokio::time::advance(Duration::from_secs(1)).await;
    let previous = PreviousInsert {
        ended: tokio::time::Instant::now(),
        took: Duration::from_secs(1),
    };
    tx.send(submission(2, queued_long_ago)).await.unwrap();
    let sender = send_later(tx);
    let first = submission(3, queued_long_ago);
    let batch = gather(&mut rx, first, &settings(100), Some(previous)).await;
    let sizes: Vec<usize> = batch.iter().map(|s| s.rows.len()).collect();
    assert_eq!(sizes, [3, 2, 4]);
    let _tx = sender.await.unwrap();
    assert_eq!(rx.recv().await.unwrap().rows.len(), 5);
}

/// After a short insert (80 ms), the wait is an eighth of it (10 ms): what comes 30 ms
/// later goes in the next batch. Without a previous insert, nothing is waited for once
/// the first submission's `max_wait` has passed.
#[tokio::test(start_paused = true)]
async fn a_batch_waits_little_after_a_short_insert() {
    for previous_took in [Some(Duration::from_millis(80)), None] {
        let (tx, mut rx) = mpsc::channel(8);
        let queued_earlier = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(80)).await;
        let previous = previous_took.map(|took| PreviousInsert {
            ended: tokio::time::Instant::now(),
            took,
        });
        let sender = send_later(tx);
        let batch = gather(
            &mut rx,
            submission(3, queued_earlier),
            &settings(100),
            previous,
        )
        .await;
        assert_eq!(batch.len(), 1, "{previous_took:?}");
        let _tx = sender.await.unwrap();
        assert_eq!(rx.recv().await.unwrap().rows.len(), 4);
    }
}

/// A submission that finds the batcher idle waits `max_wait` for others, as before.
#[tokio::test(start_paused = true)]
async fn an_idle_batcher_waits_max_wait_from_the_first_arrival() {
    let (tx, mut rx) = mpsc::channel(8);
    let previous = PreviousInsert {
        ended: tokio::time::Instant::now(),
        took: Duration::from_millis(10),
    };
    tokio::time::advance(Duration::from_secs(1)).await;
    let sender = send_later(tx);
    let first = submission(3, tokio::time::Instant::now());
    let batch = gather(&mut rx, first, &settings(100), Some(previous)).await;
    assert_eq!(
        batch.len(),
        2,
        "the one at 30 ms joins, the one at 70 ms does not"
    );
    let _tx = sender.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_batch_stops_gathering_at_max_events() {
    let (tx, mut rx) = mpsc::channel(8);
    let now = tokio::time::Instant::now();
    for events in [4, 4, 4] {
        tx.send(submission(events, now)).await.unwrap();
    }
    let batch = gather(&mut rx, submission(4, now), &settings(10), None).await;
    assert_eq!(batch.len(), 3, "4 + 4 + 4 reaches 10");
    assert_eq!(rx.recv().await.unwrap().rows.len(), 4);
}
