// The benchmark's Kafka feeder: a JVM producer, so the feed is not the bottleneck (kafka-python tops
// out at ~6-8k msgs/s on this box; this sends >100k/s on a fraction of a core).
//
// Run with the source launcher (JDK 11+, no build step):
//   java -cp '.jars/kafka/*' bench/Feeder.java <bootstrap> <records-file> <topics,comma,separated> <mode> [rate] [seconds]
// mode "preload": send every record as fast as possible, each with its own event time.
// mode "paced":   send at <rate> records/s for <seconds> (cycling through the file), stamping every
//                 record with the wall clock at send time: the tick's "timestamp" field and the Kafka
//                 record timestamp are the same millisecond, so latency = signal Kafka ts - event time.
// mode "lead":     as paced, but it starts sending at <rate> at once and counts its <seconds> from a
//                 line on stdin: the broker and this JVM warm up on the lead while the job starts, and the
//                 feed goes on at the same pace through the line (stdin closed before it: stop, exit 3).
//                 What it prints is the part after the line, with lead_sent and lead_seconds.
// Records file (big-endian): per record  byte topic, byte isoTimestamp, short keyLen, key,
//                            int prefixLen, prefix, int suffixLen, suffix, long eventMs.
// Prints one JSON line with what it sent.
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.*;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Feeder {
    record Rec(int topic, boolean iso, byte[] key, byte[] prefix, byte[] suffix, long eventMs) {}

    static byte[] value(Rec r, long ts) {
        String t = r.iso ? "\"" + Instant.ofEpochMilli(ts).toString() + "\"" : Long.toString(ts);
        byte[] tb = t.getBytes(StandardCharsets.US_ASCII);
        byte[] out = new byte[r.prefix.length + tb.length + r.suffix.length];
        System.arraycopy(r.prefix, 0, out, 0, r.prefix.length);
        System.arraycopy(tb, 0, out, r.prefix.length, tb.length);
        System.arraycopy(r.suffix, 0, out, r.prefix.length + tb.length, r.suffix.length);
        return out;
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String[] topics = args[2].split(",");
        String mode = args[3];
        double rate = args.length > 4 ? Double.parseDouble(args[4]) : 0;
        double seconds = args.length > 5 ? Double.parseDouble(args[5]) : 0;
        List<Rec> recs = new ArrayList<>();
        try (DataInputStream in = new DataInputStream(new BufferedInputStream(new FileInputStream(args[1]), 1 << 20))) {
            while (true) {
                int topic;
                try { topic = in.readByte(); } catch (EOFException e) { break; }
                boolean iso = in.readByte() != 0;
                byte[] key = new byte[in.readShort()]; in.readFully(key);
                byte[] prefix = new byte[in.readInt()]; in.readFully(prefix);
                byte[] suffix = new byte[in.readInt()]; in.readFully(suffix);
                recs.add(new Rec(topic, iso, key, prefix, suffix, in.readLong()));
            }
        }
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("acks", "1");
        p.put("linger.ms", mode.equals("preload") ? "20" : "2");
        p.put("batch.size", String.valueOf(512 * 1024));
        p.put("buffer.memory", String.valueOf(256L * 1024 * 1024));
        p.put("compression.type", "none");  // kafka-python (the simple consumer) has no lz4 codec installed
        AtomicLong errors = new AtomicLong();
        Callback cb = (md, e) -> { if (e != null) errors.incrementAndGet(); };
        long sent = 0, maxBehindMs = 0;
        long t0 = System.nanoTime();
        boolean lead = mode.equals("lead");
        // lead: nanoTime of the line on stdin (0 until then, -1 if stdin closed first); unused when paced
        AtomicLong goNs = new AtomicLong();
        if (lead) {
            Thread reader = new Thread(() -> {
                try {
                    String line = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII)).readLine();
                    goNs.compareAndSet(0, line == null ? -1 : System.nanoTime());
                } catch (IOException e) {
                    goNs.compareAndSet(0, -1);
                }
            });
            reader.setDaemon(true);
            reader.start();
        }
        long leadSent = 0, leadNs = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            if (mode.equals("preload")) {
                for (Rec r : recs) {
                    producer.send(new ProducerRecord<>(topics[r.topic], r.key, value(r, r.eventMs)), cb);
                    sent++;
                }
            } else {
                long total = lead ? Long.MAX_VALUE : (long) (rate * seconds);
                int n = recs.size();
                while (sent < total) {
                    long now = System.nanoTime();
                    long go = goNs.get();
                    if (lead && total == Long.MAX_VALUE && go != 0) {
                        if (go < 0) break;  // stdin closed before the line: the caller went away
                        leadNs = go - t0;
                        leadSent = Math.min(sent, (long) (leadNs / 1e9 * rate));  // what was due by the line
                        total = leadSent + (long) (rate * seconds);
                        maxBehindMs = 0;
                    }
                    long due = Math.min(total, (long) ((now - t0) / 1e9 * rate));
                    if (due - sent > 0) {
                        long behindMs = (long) ((due - sent) / rate * 1000);
                        maxBehindMs = Math.max(maxBehindMs, behindMs);
                    }
                    while (sent < due) {
                        Rec r = recs.get((int) (sent % n));
                        long ts = System.currentTimeMillis();
                        producer.send(new ProducerRecord<>(topics[r.topic], null, ts, r.key, value(r, ts)), cb);
                        sent++;
                    }
                    Thread.sleep(1);
                }
            }
            producer.flush();
        }
        if (lead && goNs.get() < 0) {
            System.err.println("feeder: stdin closed before the line that starts the measured feed");
            System.exit(3);
        }
        double secs = (System.nanoTime() - t0 - leadNs) / 1e9;
        System.out.printf(Locale.ROOT, "{\"sent\": %d, \"seconds\": %.3f, \"rate\": %.1f, \"errors\": %d, \"max_behind_ms\": %d, "
                          + "\"lead_sent\": %d, \"lead_seconds\": %.3f}%n",
                          sent - leadSent, secs, (sent - leadSent) / secs, errors.get(), maxBehindMs, leadSent, leadNs / 1e9);
    }
}
