package io.marketsignals.hadoop;

import org.apache.hadoop.fs.LocalFileSystem;

/**
 * Hadoop's checksummed local file system ({@code fs.file.impl}) over {@link NioRawLocalFileSystem}: what
 * Spark's and Delta's {@code FileSystem} calls on {@code file:} paths use (data files, Delta's log reads).
 */
public class NioLocalFileSystem extends LocalFileSystem {
  public NioLocalFileSystem() {
    super(new NioRawLocalFileSystem());
  }
}
