package io.marketsignals.hadoop;

import java.io.IOException;
import java.net.URI;
import java.net.URISyntaxException;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.ChecksumFs;
import org.apache.hadoop.fs.DelegateToFileSystem;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FsConstants;
import org.apache.hadoop.fs.FsServerDefaults;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.PathFilter;
import org.apache.hadoop.fs.local.LocalConfigKeys;

/**
 * Hadoop's checksummed local {@code FileContext} file system ({@code fs.AbstractFileSystem.file.impl}) over
 * {@link NioRawLocalFileSystem}: what Spark's streaming checkpoint and Delta's log writes use on {@code file:}
 * paths. Hadoop's own {@code LocalFs} builds its raw file system itself, so this mirrors it.
 */
public class NioLocalFs extends ChecksumFs {

  public NioLocalFs(URI uri, Configuration conf) throws IOException, URISyntaxException {
    super(new Raw(uri, conf));
  }

  public NioLocalFs(Configuration conf) throws IOException, URISyntaxException {
    this(FsConstants.LOCAL_FS_URI, conf);
  }

  /**
   * A directory's entries without the checksum files, as {@link ChecksumFs} lists them, but left out before
   * their status is read (a {@code stat} each) and not after (Spark's checkpoint lists its logs this way).
   */
  @Override
  public FileStatus[] listStatus(Path f) throws IOException {
    return ((Raw) getMyFs()).listStatus(f, path -> !isChecksumFile(path));
  }

  /** Hadoop's {@code RawLocalFs}, with {@link NioRawLocalFileSystem} inside. */
  static final class Raw extends DelegateToFileSystem {
    Raw(URI uri, Configuration conf) throws IOException, URISyntaxException {
      super(uri, new NioRawLocalFileSystem(), conf, FsConstants.LOCAL_FS_URI.getScheme(), false);
    }

    FileStatus[] listStatus(Path f, PathFilter filter) throws IOException {
      checkPath(f);
      return fsImpl.listStatus(f, filter);
    }

    @Override
    public int getUriDefaultPort() {
      return -1; // no default port for file:///
    }

    @Override
    @Deprecated
    public FsServerDefaults getServerDefaults() throws IOException {
      return LocalConfigKeys.getServerDefaults();
    }

    @Override
    public FsServerDefaults getServerDefaults(Path f) throws IOException {
      return LocalConfigKeys.getServerDefaults();
    }

    @Override
    public boolean isValidName(String src) {
      return true; // any local path
    }
  }
}
