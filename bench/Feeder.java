// The benchmark's Kafka feeder: a JVM producer, so the feed is not the bottleneck (kafka-python tops
// out at ~6-8k msgs/s on this box; this sends >100k/s on a fraction of a core).
//
// Run with the source launcher (JDK 11+, no build step):
//   java -cp '.jars/kafka/*' bench/Feeder.java <bootstrap> <records-file> <topics,comma,separated> <mode> [rate] [seconds]
// mode "preload": send every record as fast as possible, each with its own event time.
// mode "paced":   send at <rate> records/s for <seconds> (cycling through the file), stamping every
//                 record with the wall clock at send time: the tick's "timestamp" field and the Kafka
//                 record timestamp are the same millisecond, so latency = signal Kafka ts - event time.
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
        p.put("linger.ms", mode.equals("paced") ? "2" : "20");
        p.put("batch.size", String.valueOf(512 * 1024));
        p.put("buffer.memory", String.valueOf(256L * 1024 * 1024));
        p.put("compression.type", "none");  // kafka-python (the simple consumer) has no lz4 codec installed
        AtomicLong errors = new AtomicLong();
        Callback cb = (md, e) -> { if (e != null) errors.incrementAndGet(); };
        long sent = 0, maxBehindMs = 0;
        long t0 = System.nanoTime();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            if (mode.equals("preload")) {
                for (Rec r : recs) {
                    producer.send(new ProducerRecord<>(topics[r.topic], r.key, value(r, r.eventMs)), cb);
                    sent++;
                }
            } else {
                long total = (long) (rate * seconds);
                int n = recs.size();
                while (sent < total) {
                    long elapsedNs = System.nanoTime() - t0;
                    long due = Math.min(total, (long) (elapsedNs / 1e9 * rate));
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
        double secs = (System.nanoTime() - t0) / 1e9;
        System.out.printf(Locale.ROOT, "{\"sent\": %d, \"seconds\": %.3f, \"rate\": %.1f, \"errors\": %d, \"max_behind_ms\": %d}%n",
                          sent, secs, sent / secs, errors.get(), maxBehindMs);
    }
}
